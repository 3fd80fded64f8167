"""Tests for the hidden-character sanitizer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.guards.sanitize import has_hidden_characters, sanitize_messages, sanitize_text

TAGS = "".join(chr(0xE0000 + ord(c)) for c in "hidden")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("ig\u200bnore", "ignore"),
        ("a\u200c\u200d\u2060\ufeffb", "ab"),
        ("x\x00y\x07z\x1b[31m", "xyz[31m"),
        ("a\x7fb\x85c\x9fd", "abcd"),
        ("left\u202eright\u202c", "leftright"),
        ("\u2066iso\u2069\u200e\u200f", "iso"),
        ("soft\u00adhyphen", "softhyphen"),
        ("tag" + TAGS + "s", "tags"),
        ("han\u3164gul\u115ffill", "hangulfill"),
        ("keep\ttabs\nand\r\nnewlines", "keep\ttabs\nand\r\nnewlines"),
        ("café 日本語 emoji 👍 NBSP\u00a0kept", "café 日本語 emoji 👍 NBSP\u00a0kept"),
    ],
)
def test_sanitize_text(raw: str, clean: str) -> None:
    """Control, zero-width, bidi and tag characters go; tab, newline, CR and letters stay."""
    assert sanitize_text(raw) == clean


@pytest.mark.parametrize("text", ["plain ascii\nwith lines", "unicode ünïcödé 中文", ""])
def test_clean_text_is_returned_as_the_same_object(text: str) -> None:
    """Text without hidden characters is not copied."""
    assert sanitize_text(text) is text
    assert not has_hidden_characters(text)


def test_sanitize_messages_changes_only_text() -> None:
    """String content and text parts are cleaned; images and tool calls are left as they were."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA\u200bAA"}}
    tool_call = {"id": "c1", "function": {"name": "f", "arguments": '{"q": "a\u200bb"}'}}
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": [{"type": "text", "text": "hi\u200b there"}, image]},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "tool_call_id": "c1", "content": "result\u202e"},
    ]
    out, changed = sanitize_messages(messages)
    assert changed
    assert out[0] is messages[0]
    assert out[1]["content"][0]["text"] == "hi there"
    assert out[1]["content"][1] is image
    assert out[2] is messages[2]
    assert out[3]["content"] == "result"
    assert messages[1]["content"][0]["text"] == "hi\u200b there"  # input not mutated


def test_sanitize_messages_reports_no_change() -> None:
    """Clean messages come back unchanged and flagged as such."""
    messages = [{"role": "user", "content": "hello"}]
    out, changed = sanitize_messages(messages)
    assert not changed
    assert out[0] is messages[0]


@given(st.text())
def test_sanitize_is_idempotent_and_leaves_nothing_hidden(text: str) -> None:
    """Sanitizing twice changes nothing more, and the result holds no hidden characters."""
    once = sanitize_text(text)
    assert sanitize_text(once) == once
    assert not has_hidden_characters(once)
