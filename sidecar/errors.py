"""Every error the sidecar answers with: HTTP status, OpenAI error type, code, public message.

`SidecarError` is the root and is never raised itself; the public message never carries
internals, provider bodies, keys or prompts.
"""

from __future__ import annotations

import orjson


class SidecarError(Exception):
    """Root of all errors that become an HTTP answer. Subclasses fix status, type and code."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    message: str = "The sidecar hit an internal error."
    reason: str = ""  # the metric's reason label when it differs from `code` (a guard's reason)

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        if message is not None:
            self.message = message
        self.headers: dict[str, str] = headers or {}
        super().__init__(self.message)

    def body(self, request_id: str) -> bytes:
        """The OpenAI-style JSON body for this error."""
        return error_body(self.message, self.type, self.code, request_id)


def error_body(message: str, type_: str, code: str, request_id: str) -> bytes:
    """Render `{"error": {...}}` as the OpenAI API does, plus our request id."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "code": code, "request_id": request_id}}
    )


class InvalidJSON(SidecarError):
    status, type, code = 400, "invalid_request_error", "invalid_json"
    message = "The request body is not valid JSON."


class InvalidRequest(SidecarError):
    status, type, code = 400, "invalid_request_error", "invalid_request"
    message = "The request is not valid."


class InputTooLong(SidecarError):
    status, type, code = 400, "invalid_request_error", "input_too_long"
    message = "The input is too long."


class PromptInjectionDetected(SidecarError):
    status, type, code = 400, "invalid_request_error", "prompt_injection_detected"
    message = "The request was blocked because it looks like a prompt-injection attempt."


class RequestBlocked(SidecarError):
    status, type, code = 400, "invalid_request_error", "request_blocked"
    message = "The request was blocked by the guard policy."


class MissingApiKey(SidecarError):
    status, type, code = 401, "invalid_request_error", "missing_api_key"
    message = "No API key was provided. Send it as 'Authorization: Bearer <key>'."


class InvalidApiKey(SidecarError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"
    message = "The API key is not valid."


class InsufficientScope(SidecarError):
    status, type, code = 403, "permission_error", "insufficient_scope"
    message = "The API key is not allowed to use this endpoint."


class ModelNotAllowed(SidecarError):
    status, type, code = 403, "permission_error", "model_not_allowed"
    message = "The API key is not allowed to use this model."


class AbuseDetected(SidecarError):
    status, type, code = 403, "permission_error", "abuse_detected"
    message = "Requests from this key are paused because of suspected abuse."


class NotFound(SidecarError):
    status, type, code = 404, "invalid_request_error", "not_found"
    message = "Unknown URL."


class MethodNotAllowed(SidecarError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"
    message = "This method is not allowed on this URL."


class RequestTimeout(SidecarError):
    status, type, code = 408, "invalid_request_error", "request_timeout"
    message = "The request body was not received in time."


class BodyTooLarge(SidecarError):
    status, type, code = 413, "invalid_request_error", "body_too_large"
    message = "The request body is too large."


class UnsupportedMediaType(SidecarError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"
    message = "The request body must be 'application/json' without content encoding."


class RateLimitExceeded(SidecarError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"
    message = "Rate limit exceeded."


class TokenQuotaExceeded(SidecarError):
    status, type, code = 429, "rate_limit_error", "token_quota_exceeded"
    message = "Token quota exceeded."


class InternalError(SidecarError):
    """An unexpected failure inside the sidecar; details stay in the server log."""


class UpstreamError(SidecarError):
    status, type, code = 502, "api_error", "upstream_error"
    message = "The model provider could not be reached or returned an error."


class OutputBlocked(SidecarError):
    status, type, code = 502, "api_error", "output_blocked"
    message = "The model's response was blocked by the output policy."


class StoreUnavailable(SidecarError):
    status, type, code = 503, "api_error", "store_unavailable"
    message = "The sidecar's store is unavailable; try again shortly."


class UpstreamTimeout(SidecarError):
    status, type, code = 504, "api_error", "upstream_timeout"
    message = "The model provider did not answer in time."


class ConfigError(Exception):
    """An invalid setting; the message names the field and is one line."""
