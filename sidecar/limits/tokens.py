"""Token estimates for reservations: prompt tokens from the request text, plus the completion cap.

The estimate only has to be an honest upper-ish bound that is cheap to compute: it is
replaced by the provider's real `usage` when the request settles. English text runs near
four characters per token; other scripts nearer one token per character, so non-ASCII
characters count one token each. No tokenizer is loaded on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def completion_cap(route: str, body: Mapping[str, Any], default_max_tokens: int) -> int:
    """Completion tokens the request may produce: max_completion_tokens / max_tokens (chat,
    completions, Anthropic Messages) / max_output_tokens (Responses), times n."""
    if route == "embeddings":
        return 0
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    if cap is None:
        cap = body.get("max_output_tokens")
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        cap = default_max_tokens
    choices = body.get("n", 1)
    if isinstance(choices, bool) or not isinstance(choices, int) or choices < 1:
        choices = 1
    return int(cap) * choices


def estimate_tokens(route: str, body: Mapping[str, Any], settings: LimitsSettings,
                    prompt: int | None = None) -> int:
    """Tokens to reserve for a request: prompt estimate + completion cap, capped by the settings.
    Pass `prompt` when the caller already has the prompt estimate (it is not computed twice)."""
    if prompt is None:
        prompt = prompt_tokens(route, body)
    estimate = prompt + completion_cap(route, body, settings.default_max_tokens)
    return min(estimate, settings.max_reserved_tokens)
