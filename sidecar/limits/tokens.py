"""Token estimates for reservations: prompt tokens from the request text, plus the completion cap;
and the cap the sidecar sets so the provider cannot write past what was reserved.

The estimate only has to be an honest upper-ish bound that is cheap to compute: it is
replaced by the provider's real `usage` when the request settles. English text runs near
four characters per token; other scripts nearer one token per character, so non-ASCII
characters count one token each. No tokenizer is loaded on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.errors import InvalidRequest
from sidecar.settings import LimitsSettings

CHARS_PER_TOKEN = 4
PER_MESSAGE_TOKENS = 4  # role and separators around each chat message
PER_REQUEST_TOKENS = 3  # priming of the assistant's reply
IMAGE_TOKENS = 765      # one high-detail 1024x1024 image (OpenAI's tiling rule)


def text_tokens(text: str) -> int:
    """Estimated tokens of one string: ASCII at 4 characters a token, other characters 1 each."""
    if text.isascii():
        return -(-len(text) // CHARS_PER_TOKEN)
    ascii_chars = len(text.encode("ascii", "ignore"))
    return -(-ascii_chars // CHARS_PER_TOKEN) + (len(text) - ascii_chars)


def _content_tokens(content: Any) -> int:
    """Tokens of a message content: a string or a list of parts (text, images, audio...)."""
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += text_tokens(part)
            elif isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    total += text_tokens(part["text"])
                elif part.get("type") in ("image_url", "input_image", "image"):
                    total += IMAGE_TOKENS
                elif isinstance(part.get("refusal"), str):
                    total += text_tokens(part["refusal"])
        return total
    return 0


def _prompt_tokens(value: Any) -> int:
    """Tokens of a completions `prompt` or embeddings `input`: text, token ids or lists of them."""
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_prompt_tokens(v) for v in value)
    return 0


def _json_tokens(value: Any) -> int:
    """Tokens of tool/function definitions and similar structured prompt parts."""
    if value is None:
        return 0
    return text_tokens(repr(value))


def prompt_tokens(route: str, body: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of an OpenAI request body for `route`."""
    if route == "chat":
        total = PER_REQUEST_TOKENS
        messages = body.get("messages")
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, Mapping):
                    total += PER_MESSAGE_TOKENS + _content_tokens(message.get("content"))
                    if message.get("tool_calls") is not None:
                        total += _json_tokens(message["tool_calls"])
        return total + _json_tokens(body.get("tools")) + _json_tokens(body.get("functions"))
    if route == "completions":
        return _prompt_tokens(body.get("prompt"))
    if route == "embeddings":
        return _prompt_tokens(body.get("input"))
    return 0


CAP_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
# The field the sidecar sets when a request names no cap: chat's current one (OpenAI's reasoning
# models refuse max_tokens), the only one completions know, the Responses API's and Anthropic's
# (which every Messages request carries).
DEFAULT_CAP_FIELD = {"chat": "max_completion_tokens", "completions": "max_tokens",
                     "responses": "max_output_tokens", "messages": "max_tokens"}


def completion_cap(body: Mapping[str, Any]) -> int | None:
    """The completion cap per choice the request asks for (the larger of max_completion_tokens
    and max_tokens when both are given), or None when it sets none. InvalidRequest naming the
    field when a cap is not a whole number >= 0 (floats such as 1e5, strings, booleans)."""
    cap: int | None = None
    for name in CAP_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidRequest(f"'{name}' must be a whole number of tokens (0 or more).")
        cap = value if cap is None else max(cap, value)
    return cap


def _choices(body: Mapping[str, Any]) -> int:
    choices = body.get("n", 1)
    if isinstance(choices, bool) or not isinstance(choices, int) or choices < 1:
        return 1
    return choices


def clamp_cap(route: str, body: dict[str, Any], reserved_completion: int) -> bool:
    """Make the provider unable to spend past the reservation: when the request sets no cap,
    set the route's cap field to the completion tokens reserved per choice; lower any cap above
    that. True when `body` changed (it must then be re-encoded). Call after `completion_cap`
    validated the caps (estimate_tokens does)."""
    if route not in DEFAULT_CAP_FIELD:
        return False
    allowed = max(1, reserved_completion // _choices(body))
    present = [name for name in CAP_FIELDS if body.get(name) is not None]
    if not present:
        body[DEFAULT_CAP_FIELD[route]] = allowed
        return True
    changed = False
    for name in present:
        if body[name] > allowed:
            body[name] = allowed
            changed = True
    return changed


def _reserved_completion(route: str, body: Mapping[str, Any], default_max_tokens: int) -> int:
    """Completion tokens to reserve: the cap (or the default) times n."""
    if route == "embeddings":
        return 0
    cap = completion_cap(body)
    return (default_max_tokens if cap is None else cap) * _choices(body)


def estimate_tokens(route: str, body: Mapping[str, Any], settings: LimitsSettings,
                    prompt: int | None = None) -> int:
    """Tokens to reserve for a request: prompt estimate + completion cap, capped by the settings.
    Pass `prompt` when the caller already has the prompt estimate (it is not computed twice)."""
    if prompt is None:
        prompt = prompt_tokens(route, body)
    estimate = prompt + _reserved_completion(route, body, settings.default_max_tokens)
    return min(estimate, settings.max_reserved_tokens)
