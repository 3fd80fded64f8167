"""Requests aiohttp's HTTP parser refuses get the sidecar's JSON error format too.

A malformed request line, a bad header or an oversized header never reaches the app or its
middleware: aiohttp answers it itself, in text/plain (and its message can quote the offending
bytes). Clients and the error schema expect `{"error": {...}}` everywhere, so the parser's
answer is replaced with ours (same status, connection still closed, nothing of the request
echoed). aiohttp offers no hook for this, so its `RequestHandler.handle_error` is wrapped once
per process; a test pins the behaviour against the installed aiohttp.
"""

from __future__ import annotations

import secrets
from typing import Any

from aiohttp import web, web_protocol

from sidecar.errors import error_body

_INSTALLED = "_sidecar_json_errors"
_MESSAGES = {
    408: ("request_timeout", "The request did not arrive in time."),
    413: ("body_too_large", "The request is too large."),
    431: ("invalid_request", "The request headers are too large."),
}
_NOT_HTTP = ("invalid_request", "The request is not valid HTTP/1.1.")


def json_parser_error(status: int) -> web.Response:
    """The JSON answer (DESIGN.md section 5 codes) for a request refused before the app saw it."""
    if status >= 500:
        type_, code, message = "server_error", "internal_error", "The sidecar hit an internal error."
    else:
        type_ = "invalid_request_error"
        code, message = _MESSAGES.get(status, _NOT_HTTP)
    request_id = "req_" + secrets.token_hex(12)
    response = web.Response(status=status, body=error_body(message, type_, code, request_id),
                            content_type="application/json",
                            headers={"X-Request-Id": request_id})
    response.force_close()
    return response


def install_json_parser_errors() -> None:
    """Make aiohttp's own error answers JSON in this process (idempotent)."""
    handler_class: Any = web_protocol.RequestHandler
    if getattr(handler_class.handle_error, _INSTALLED, False):
        return
    original = handler_class.handle_error

    def handle_error(self: web_protocol.RequestHandler, request: Any, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # aiohttp's own version logs the failure (our log filter keeps it to one line) and
        # raises if part of a response was already sent; its text answer is discarded.
        original(self, request, status, exc, message)
        return json_parser_error(status)

    setattr(handle_error, _INSTALLED, True)
    handler_class.handle_error = handle_error
