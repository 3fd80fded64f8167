"""Anthropic's Messages API (`POST /v1/messages`): the typed request and the error shape.
Pure: no I/O. The reply's output guards are `typed_stream.MessagesProcessor`.

Request slots: `system` (a string or text blocks) is the app's own instruction; message
content blocks are text, `tool_use` input (every string in it), `tool_result` content (data,
whatever role carries it), documents (plain-text sources, titles and context: data), thinking,
search results and any block or field this module does not know (every string in it). Binary
sources (base64 images and PDFs, URLs, file ids) and opaque fields (signatures, redacted
thinking) are not text the guards can read and pass as they are.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.errors import InvalidRequest, SidecarError
from sidecar.model import DATA
from sidecar.proxy.requests import (
    _ENUM_KEYS,
    ParsedRequest,
    _bad,
    _string_walk,
    _trust,
    message_list,
    message_role,
    register_parser,
    walk_fields,
)

ROUTE = "messages"
ROLES = frozenset({"user", "assistant"})
# Top-level fields the model does not read as text.
_NOT_READ = frozenset({"model", "max_tokens", "stream", "temperature", "top_k", "top_p",
                       "stop_sequences", "metadata", "thinking", "service_tier", "container",
                       "inference_geo"})
# Inside blocks: ids, enums and opaque values, never text.
_SKIP = _ENUM_KEYS | frozenset({"tool_use_id", "media_type", "signature", "cache_control", "url",
                                "encrypted_content", "encrypted_index"})
# Our status -> Anthropic's error type.
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
                429: "rate_limit_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error")


def error_object(error_type_: str, message: str, code: str | None, request_id: str) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}` as Anthropic sends it; our code and
    request id ride along (an SDK reads the fields it knows and keeps the rest)."""
    error: dict[str, Any] = {"type": error_type_, "message": message}
    if code:
        error["code"] = code
    return {"type": "error", "error": error, "request_id": request_id}


def error_body(error: SidecarError, request_id: str) -> bytes:
    return orjson.dumps(error_object(error_type(error.status), error.message, error.code, request_id))


# -- request -----------------------------------------------------------------------------------

def parse_messages(req: ParsedRequest, trusted: frozenset[str], _allow_token_ids: bool) -> None:
    body = req.body
    tokens = body.get("max_tokens")
    if tokens is None:
        raise InvalidRequest("Missing required field 'max_tokens'.")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise _bad("max_tokens", "must be a positive whole number")
    system = body.get("system")
    if system is not None:
        trust = _trust("system", trusted)
        if isinstance(system, str):
            if system:
                req.add(body, "system", "system", "system", trust, -1)
        elif isinstance(system, list):
            _blocks(req, system, "system", "system", trust, -1)
        else:
            raise _bad("system", "must be a string or a list of text blocks")
    for i, message in enumerate(message_list(body)):
        at = f"messages[{i}]"
        role = message_role(message, at, ROLES)
        trust = _trust(role, trusted)
        for key, value in message.items():
            where = f"{at}.{key}"
            if key == "role" or value is None:
                continue
            if key == "content":
                if isinstance(value, str):
                    if value:
                        req.add(message, "content", where, role, trust, i)
                elif isinstance(value, list):
                    _blocks(req, value, where, role, trust, i)
                else:
                    raise _bad(where, "must be a string or a list of content blocks")
            else:
                _string_walk(req, message, key, where, role, trust, i)
        if "content" not in message:
            raise InvalidRequest(f"Missing required field '{at}.content'.")
    for key, value in body.items():
        if key in ("system", "messages") or key in _NOT_READ or value is None:
            continue
        if key == "tools" and not isinstance(value, list):
            raise _bad(key, "must be a list")
        role = "tools" if key in ("tools", "tool_choice", "mcp_servers") else key
        _string_walk(req, body, key, key, role, _trust(role, trusted), -1)


def _blocks(req: ParsedRequest, blocks: list[Any], path: str, role: str, trust: str,
            group: int) -> None:
    for j, block in enumerate(blocks):
        where = f"{path}[{j}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(where, "must be an object with a string 'type'")
        kind = block["type"]
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _bad(f"{where}.text", "must be a string")
            _fields(req, block, where, role, trust, group)
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                if content:
                    req.add(block, "content", f"{where}.content", "tool", DATA, group)
            elif isinstance(content, list):
                _blocks(req, content, f"{where}.content", "tool", DATA, group)
            elif content is not None:
                raise _bad(f"{where}.content", "must be a string or a list of content blocks")
            _fields(req, block, where, "tool", DATA, group, {"content"})
        elif kind == "document":
            _document(req, block, where, role, group)
        elif kind == "search_result":
            content = block.get("content")
            if isinstance(content, list):
                _blocks(req, content, f"{where}.content", role, DATA, group)
            _fields(req, block, where, role, DATA, group, {"content"})
        elif kind == "tool_use" or kind == "server_tool_use":
            if not isinstance(block.get("input", {}), dict):
                raise _bad(f"{where}.input", "must be an object")
            _fields(req, block, where, role, trust, group)
        elif kind in ("image", "redacted_thinking"):
            continue  # binary source or encrypted thinking: nothing a guard can read
        else:  # thinking, and any block this module does not know: every string in it
            _fields(req, block, where, role, trust if kind == "thinking" else DATA, group)


def _fields(req: ParsedRequest, block: dict[str, Any], where: str, role: str, trust: str,
            group: int, done: frozenset[str] | set[str] = frozenset()) -> None:
    walk_fields(req, block, where, role, trust, group, done, _SKIP)


def _document(req: ParsedRequest, block: dict[str, Any], where: str, role: str, group: int) -> None:
    """A document is data: its plain-text source, nested content blocks, title and context;
    base64 PDFs, URLs and file ids cannot be read here and pass."""
    source = block.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("type"), str):
        raise _bad(f"{where}.source", "must be an object with a string 'type'")
    if source["type"] == "text":
        if not isinstance(source.get("data"), str):
            raise _bad(f"{where}.source.data", "must be a string")
        if source["data"]:
            req.add(source, "data", f"{where}.source.data", role, DATA, group)
    elif source["type"] == "content":
        content = source.get("content")
        if isinstance(content, str):
            if content:
                req.add(source, "content", f"{where}.source.content", role, DATA, group)
        elif isinstance(content, list):
            _blocks(req, content, f"{where}.source.content", role, DATA, group)
    _fields(req, block, where, role, DATA, group, {"source"})


register_parser(ROUTE, parse_messages)
