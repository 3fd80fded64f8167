"""Property: for any request body the parser accepts, every string the provider receives that
its model reads is one of the text slots the guards scanned."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.errors import SidecarError
from sidecar.proxy.requests import parse_request

# Strings a model does not read as text: sampling and routing fields, ids, roles, part types,
# and binary payloads (images, audio, non-text files) no text guard can read.
NOT_READ_TOP = {"model", "user", "stop", "metadata", "service_tier", "reasoning_effort",
                "stream_options", "audio", "modalities", "logit_bias", "prompt_cache_key",
                "safety_identifier", "verbosity"}
NOT_READ_KEYS = {"type", "id", "tool_call_id", "role", "detail", "format", "strict", "file_id"}
BINARY_PARTS = {"image_url", "input_audio"}

text = st.text(min_size=1, max_size=12)
json_leaf = st.one_of(text, st.integers(-5, 5), st.booleans(), st.none())
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["a", "b", "note", "text"]),
                                                 inner, max_size=3)), max_leaves=8)


@st.composite
def content_part(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["text", "input_text", "image_url", "input_audio", "file",
                                 "refusal", "mystery"]))
    if kind in ("text", "input_text"):
        return {"type": kind, "text": draw(text)}
    if kind == "refusal":
        return {"type": kind, "refusal": draw(text)}
    if kind == "image_url":
        return {"type": kind, "image_url": {"url": "https://example.com/" + draw(text),
                                            "detail": "low"}}
    if kind == "input_audio":
        return {"type": kind, "input_audio": {"data": "UklGRg==", "format": "wav"}}
    if kind == "file":
        media = draw(st.sampled_from(["text/plain", "application/json", "application/pdf"]))
        payload = base64.b64encode(draw(text).encode()).decode()
        return {"type": "file", "file": {"filename": draw(text),
                                         "file_data": f"data:{media};base64,{payload}"}}
    return {"type": kind, "payload": draw(json_value)}


@st.composite
def message(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]))
    out: dict[str, Any] = {"role": role}
    content = draw(st.one_of(st.none(), text, st.lists(content_part(), max_size=3)))
    out["content"] = content
    if draw(st.booleans()):
        out["name"] = draw(text)
    if role == "assistant" and draw(st.booleans()):
        out["tool_calls"] = [{"id": "c1", "type": "function",
                              "function": {"name": draw(text), "arguments": draw(text)}}]
    if role == "tool":
        out["tool_call_id"] = "c1"
    if draw(st.booleans()):
        out[draw(st.sampled_from(["extra", "memo"]))] = draw(json_value)
    return out


@st.composite
def chat_body(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": draw(st.lists(message(), min_size=1,
                                                                     max_size=4))}
    if draw(st.booleans()):
        body["tools"] = [{"type": "function", "function": {
            "name": draw(text), "description": draw(text),
            "parameters": {"type": "object", "properties": {"x": {"type": "string",
                                                                  "description": draw(text),
                                                                  "enum": [draw(text)]}}}}}]
    if draw(st.booleans()):
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": draw(text), "schema": {"type": "object", "description": draw(text)}}}
    if draw(st.booleans()):
        body[draw(st.sampled_from(["context", "hint"]))] = draw(json_value)
    if draw(st.booleans()):
        body["user"] = draw(text)
        body["stop"] = [draw(text)]
        body["metadata"] = {"k": draw(text)}
    return body


def read_strings(value: Any, top: bool = True) -> list[str]:
    """The strings of a forwarded body that a model reads."""
    out: list[str] = []
    if isinstance(value, dict):
        if value.get("type") in BINARY_PARTS:
            return out
        for key, sub in value.items():
            if (top and key in NOT_READ_TOP) or key in NOT_READ_KEYS:
                continue
            if key == "file_data" and isinstance(sub, str):
                if sub.startswith(("data:text/", "data:application/json")):
                    payload = sub.partition(",")[2]
                    decoded = base64.b64decode(payload).decode()
                    if decoded:
                        out.append(decoded)
                continue
            out.extend(read_strings(sub, False))
    elif isinstance(value, list):
        for sub in value:
            out.extend(read_strings(sub, False))
    elif isinstance(value, str) and value:
        out.append(value)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_body())
def test_every_string_the_model_reads_was_a_scanned_slot(body: dict[str, Any]) -> None:
    try:
        parsed = parse_request("chat", orjson.dumps(body), 64)
    except SidecarError as exc:
        assert exc.status == 400
        return
    forwarded = orjson.loads(parsed.serialize())
    scanned = {slot.text for slot in parsed.texts()}
    missed = [s for s in read_strings(forwarded) if s not in scanned]
    assert not missed, missed


@settings(max_examples=200, deadline=None)
@given(st.one_of(text, st.lists(text, min_size=1, max_size=4)), st.one_of(st.none(), text),
       st.dictionaries(st.sampled_from(["hint", "context"]), json_value, max_size=1))
def test_completions_prompt_suffix_and_unknown_fields_are_slots(
        prompt: Any, suffix: str | None, extra: dict[str, Any]) -> None:
    body = {"model": "m", "prompt": prompt, **({"suffix": suffix} if suffix else {}), **extra}
    parsed = parse_request("completions", orjson.dumps(body), 64)
    scanned = {slot.text for slot in parsed.texts()}
    assert [s for s in read_strings(orjson.loads(parsed.serialize())) if s not in scanned] == []


keys = st.text(alphabet=st.sampled_from('ab:"\\ é'), min_size=1, max_size=4)
objects = st.recursive(json_leaf | st.text(alphabet=st.sampled_from('x:"\\{}'), max_size=6),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner,
                                                                                    max_size=3),
                       max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, objects, min_size=1, max_size=4), st.data())
def test_duplicate_keys_are_found_whatever_the_strings_hold(
        body: dict[str, Any], data: st.DataObject) -> None:
    """Colons and escaped quotes inside strings never hide a duplicate or invent one."""
    from sidecar.proxy.requests import has_duplicate_keys

    raw = orjson.dumps(body)
    assert has_duplicate_keys(raw, body) is None
    key = data.draw(st.sampled_from(sorted(body)))
    twice = raw[:-1] + b"," + orjson.dumps(key) + b":" + orjson.dumps(body[key]) + b"}"
    assert has_duplicate_keys(twice, orjson.loads(twice)) == key
