"""Property: for Responses and Messages bodies of any shape, parsing either refuses with a 400
or lists as a text slot every string the model reads in what is forwarded (the rest are ids,
enums, sampling fields and binary sources, named below)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import SidecarError
from sidecar.proxy.requests import parse_request

text = st.text(min_size=1, max_size=12)
awkward: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), text, st.lists(text, max_size=2),
    st.dictionaries(st.sampled_from(["a", "note", "type", "id"]), text, max_size=2))
# Fields that hold no text the model reads: sampling, routing, ids, enums, opaque and binary.
NOT_READ_TOP = {"model", "stream", "max_tokens", "max_output_tokens", "temperature",
                "previous_response_id", "metadata", "store", "include", "stop_sequences",
                "reasoning", "thinking", "service_tier", "conversation"}
NOT_READ_KEYS = {"type", "id", "call_id", "tool_use_id", "media_type", "signature", "url",
                 "file_id", "image_url", "detail", "cache_control", "encrypted_content",
                 "status", "file_url", "format", "strict", "tool_call_id", "encrypted_index",
                 "role"}
BINARY_BLOCKS = {"image", "redacted_thinking", "input_image"}


def block(kinds: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly well-formed blocks or parts of the given kinds, with stray fields of any type."""
    return st.fixed_dictionaries({
        "type": st.one_of(st.sampled_from(kinds), st.sampled_from(kinds), awkward),
        "text": text, "input": st.dictionaries(text, st.one_of(text, awkward), max_size=2),
        "source": st.one_of(
            st.fixed_dictionaries({"type": st.just("text"), "media_type": st.just("text/plain"),
                                   "data": text}),
            st.fixed_dictionaries({"type": st.just("base64"), "media_type": st.just("image/png"),
                                   "data": text}),
            st.fixed_dictionaries({"type": st.just("content"),
                                   "content": st.lists(st.fixed_dictionaries(
                                       {"type": st.just("text"), "text": text}), max_size=2)}))},
        optional={
            "content": st.one_of(text, st.lists(st.fixed_dictionaries(
                {"type": st.just("text"), "text": text}), max_size=2), awkward),
            "name": text, "id": text, "tool_use_id": text, "thinking": text, "signature": text,
            "title": text, "context": text, "refusal": text, "filename": text, "note": awkward})


def role(*names: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(names), st.sampled_from(names), st.sampled_from(names), awkward)


CLAUDE_BLOCKS = ["text", "tool_use", "tool_result", "document", "thinking", "image",
                 "redacted_thinking", "search_result", "future_block"]
RESPONSE_PARTS = ["input_text", "output_text", "refusal", "input_file", "input_image", "future"]


@st.composite
def messages_body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "max_tokens": 16, "messages": draw(st.lists(
        st.fixed_dictionaries({"role": role("user", "assistant"),
                               "content": st.one_of(text, st.lists(block(CLAUDE_BLOCKS), max_size=3),
                                                    st.lists(block(CLAUDE_BLOCKS), max_size=3),
                                                    awkward)},
                              optional={"note": awkward}), min_size=1, max_size=3))}
    if draw(st.booleans()):
        body["system"] = draw(st.one_of(text, st.lists(block(["text"]), max_size=2), awkward))
    if draw(st.booleans()):
        body["tools"] = [{"name": draw(text), "description": draw(text), "input_schema": {
            "type": "object", "properties": {"q": {"type": "string", "description": draw(text)}}}}]
    if draw(st.booleans()):
        body[draw(st.sampled_from(["hint", "stop_sequences", "metadata"]))] = draw(awkward)
    return body


@st.composite
def responses_body(draw: st.DrawFn) -> dict[str, Any]:
    item = st.one_of(
        st.fixed_dictionaries({"role": role("user", "assistant", "developer"),
                               "content": st.one_of(text, st.lists(block(RESPONSE_PARTS), max_size=3),
                                                    st.lists(block(RESPONSE_PARTS), max_size=3),
                                                    awkward)},
                              optional={"type": st.just("message"), "note": awkward}),
        st.fixed_dictionaries({"type": st.sampled_from(["function_call", "function_call_output",
                                                        "reasoning", "custom_tool_call_output",
                                                        "item_reference", "future_item"])},
                              optional={"call_id": text, "name": text, "arguments": text,
                                        "output": st.one_of(text, awkward), "id": text,
                                        "summary": st.lists(st.fixed_dictionaries({
                                            "type": st.just("summary_text"), "text": text}),
                                            max_size=2), "note": awkward}))
    body: dict[str, Any] = {"model": "m", "input": draw(st.one_of(text, st.lists(item, max_size=3),
                                                                  awkward))}
    if draw(st.booleans()):
        body["instructions"] = draw(st.one_of(text, awkward))
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "name": draw(text), "description": draw(text),
                          "parameters": {"type": "object", "properties": {
                              "q": {"type": "string", "description": draw(text)}}}}]
    if draw(st.booleans()):
        body[draw(st.sampled_from(["hint", "previous_response_id", "text", "prompt"]))] = draw(awkward)
    return body


def read_strings(value: Any, top: bool = True) -> list[str]:
    out: list[str] = []
    if isinstance(value, dict):
        if value.get("type") in BINARY_BLOCKS:
            return out
        binary_source = value.get("type") in ("base64", "url", "file")
        for key, sub in value.items():
            if (top and key in NOT_READ_TOP) or key in NOT_READ_KEYS or \
                    (binary_source and key == "data"):
                continue
            out.extend(read_strings(sub, False))
    elif isinstance(value, list):
        for sub in value:
            out.extend(read_strings(sub, False))
    elif isinstance(value, str) and value:
        out.append(value)
    return out


def check(route: str, body: dict[str, Any]) -> None:
    try:
        parsed = parse_request(route, orjson.dumps(body), 64)
    except SidecarError as exc:
        assert exc.status == 400
        return
    scanned = {slot.text for slot in parsed.texts()}
    missed = [s for s in read_strings(orjson.loads(parsed.serialize())) if s not in scanned]
    assert not missed, missed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages_body())
def test_every_string_of_a_messages_body_is_a_slot(body: dict[str, Any]) -> None:
    check("messages", body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses_body())
def test_every_string_of_a_responses_body_is_a_slot(body: dict[str, Any]) -> None:
    check("responses", body)
