"""Shape and size checks on the parsed chat messages, before any guard reads their text.

Pure: raises `InputRejected` naming the limit that was exceeded, never echoing user text (the
message goes back to the client and into logs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Per-request input bounds; every field is a hard cap (0 or less disables that cap)."""

    max_messages: int = 256
    max_chars_per_message: int = 10_000
    max_chars_per_request: int = 100_000
    max_tokens_per_request: int = 32_000
    max_parts_per_message: int = 64
    roles: frozenset[str] = ROLES


class InputRejected(Exception):
    """The request breaks a limit or the chat shape; `code` is the OpenAI-style error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def estimate_tokens(text: str) -> int:
    """Cheap upper-ish token estimate: ceil(chars / 4) for ASCII, ceil(UTF-8 bytes / 4) otherwise.

    Four characters per token is the usual figure for English BPE vocabularies. For other
    scripts a character is often a whole token, so UTF-8 bytes (2-3 per character for Cyrillic,
    Hindi, Chinese) keep the estimate from falling far below the real count. No tokenizer is
    loaded: this runs on every request.
    """
    n = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return (n + 3) // 4


def _bad(what: str) -> InputRejected:
    return InputRejected("invalid_request", what)


def _message_text_len(i: int, content: Any, limits: InputLimits) -> tuple[int, int]:
    """Return (characters, estimated tokens) of a message's text; raise on a bad shape."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), estimate_tokens(content)
    if not isinstance(content, list):
        raise _bad(f"messages[{i}].content must be a string or a list of content parts")
    if 0 < limits.max_parts_per_message < len(content):
        raise _bad(f"messages[{i}].content has more than {limits.max_parts_per_message} content parts")
    chars = tokens = 0
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise _bad(f"messages[{i}].content[{j}] must be an object with a string 'type'")
        if part["type"] == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"messages[{i}].content[{j}].text must be a string")
            chars += len(text)
            tokens += estimate_tokens(text)
        # image_url, input_audio, file, ...: passed through untouched, not counted as text.
    return chars, tokens


def validate_chat(messages: Sequence[Any], limits: InputLimits) -> None:
    """Check count, roles, content shape and sizes of chat `messages`; raise `InputRejected`.

    Codes: `invalid_request` for a bad shape or role, `input_too_long` for a size limit.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise _bad("messages must be a list")
    if not messages:
        raise _bad("messages must not be empty")
    if 0 < limits.max_messages < len(messages):
        raise InputRejected("input_too_long", f"too many messages: the limit is {limits.max_messages}")
    total_chars = total_tokens = 0
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise _bad(f"messages[{i}] must be an object")
        role = msg.get("role")
        if not isinstance(role, str) or role not in limits.roles:
            allowed = ", ".join(sorted(limits.roles))
            raise _bad(f"messages[{i}].role must be one of: {allowed}")
        chars, tokens = _message_text_len(i, msg.get("content"), limits)
        if 0 < limits.max_chars_per_message < chars:
            raise InputRejected(
                "input_too_long",
                f"messages[{i}] is longer than {limits.max_chars_per_message} characters",
            )
        total_chars += chars
        total_tokens += tokens
    if 0 < limits.max_chars_per_request < total_chars:
        raise InputRejected(
            "input_too_long",
            f"the request text is longer than {limits.max_chars_per_request} characters",
        )
    if 0 < limits.max_tokens_per_request < total_tokens:
        raise InputRejected(
            "input_too_long",
            f"the request text is estimated above {limits.max_tokens_per_request} tokens",
        )
