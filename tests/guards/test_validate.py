"""Tests for request validation: shape, roles, sizes, and error codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.guards.validate import InputLimits, InputRejected, estimate_tokens, validate_chat

LIMITS = InputLimits()
SECRET_TEXT = "my-private-text-" * 700  # 11,200 characters, over the default per-message cap


def _user(content: object) -> dict[str, object]:
    return {"role": "user", "content": content}


@pytest.mark.parametrize(
    "messages",
    [
        [_user("hello")],
        [{"role": r, "content": "x"} for r in sorted(LIMITS.roles)],
        [{"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}],
        [_user([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}])],
        [_user([{"type": "input_audio", "input_audio": {"data": "A" * 50_000}}])],
        [_user("x" * 10_000)],
    ],
)
def test_valid_requests_pass(messages: list[dict[str, object]]) -> None:
    """Well-formed chats, including images and every allowed role, are accepted."""
    validate_chat(messages, LIMITS)


@pytest.mark.parametrize(
    ("messages", "code", "fragment"),
    [
        ([], "invalid_request", "must not be empty"),
        ("hello", "invalid_request", "must be a list"),
        ([["user", "hi"]], "invalid_request", "messages[0] must be an object"),
        ([{"role": "root", "content": "x"}], "invalid_request", "messages[0].role"),
        ([{"content": "x"}], "invalid_request", "messages[0].role"),
        ([_user(42)], "invalid_request", "messages[0].content"),
        ([_user([{"text": "no type"}])], "invalid_request", "content[0]"),
        ([_user([{"type": "text", "text": 5}])], "invalid_request", "content[0].text"),
        ([_user([{"type": "text", "text": "a"}] * 65)], "invalid_request", "more than 64"),
        ([_user(SECRET_TEXT)], "input_too_long", "messages[0] is longer than 10000"),
        ([_user("a")] * 257, "input_too_long", "too many messages"),
        ([_user("a" * 9_000)] * 12, "input_too_long", "longer than 100000 characters"),
    ],
)
def test_invalid_requests_name_the_problem(messages: object, code: str, fragment: str) -> None:
    """Each broken rule raises InputRejected with its code and a message naming the limit."""
    with pytest.raises(InputRejected) as exc:
        validate_chat(messages, LIMITS)  # type: ignore[arg-type]
    assert exc.value.code == code
    assert fragment in exc.value.message


def test_token_limit_is_enforced_separately() -> None:
    """A tight token budget rejects a request that is within the character limits."""
    limits = InputLimits(max_tokens_per_request=100)
    with pytest.raises(InputRejected) as exc:
        validate_chat([_user("word " * 100)], limits)
    assert exc.value.code == "input_too_long"
    assert "tokens" in exc.value.message


def test_text_parts_count_towards_message_length() -> None:
    """Text spread across content parts is summed for the per-message limit."""
    parts = [{"type": "text", "text": "a" * 6_000}, {"type": "text", "text": "b" * 6_000}]
    with pytest.raises(InputRejected):
        validate_chat([_user(parts)], LIMITS)


def test_error_never_echoes_user_text() -> None:
    """The rejection message carries no part of the prompt."""
    with pytest.raises(InputRejected) as exc:
        validate_chat([_user(SECRET_TEXT)], LIMITS)
    assert "private" not in exc.value.message
    assert "private" not in str(exc.value)


def test_zero_disables_a_limit() -> None:
    """A limit set to 0 is not enforced."""
    validate_chat([_user("x" * 50_000)], InputLimits(max_chars_per_message=0, max_tokens_per_request=0))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), ("abcd", 1), ("abcde", 2), ("a" * 400, 100), ("日本語", 3)],
)
def test_estimate_tokens(text: str, expected: int) -> None:
    """Token estimates follow ceil(chars/4) for ASCII and ceil(UTF-8 bytes/4) otherwise."""
    assert estimate_tokens(text) == expected


@given(st.text(max_size=2_000))
def test_estimate_tokens_is_never_below_a_quarter_of_the_characters(text: str) -> None:
    """The estimate never undercounts below one token per four characters."""
    assert estimate_tokens(text) * 4 >= len(text)
