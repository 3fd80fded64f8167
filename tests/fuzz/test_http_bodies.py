"""IN-3: every request body, however malformed, gets a 2xx or a 4xx in the OpenAI error schema."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SidecarFactory
from tests.fuzz.harness import LoopBridge, assert_answer, dumps, fuzz, in_thread, json_values, post

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
routes = st.sampled_from(ROUTES)

# Values that are the wrong type for some field, or awkward for every field.
awkward = st.one_of(
    json_values,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.just(float("nan")), st.just(float("inf")),
    st.sampled_from(["", "\x00", "\u202e", "\U000e0041"]),
    st.integers(min_value=1, max_value=5_000).map(lambda n: "a" * n),
)
message = st.fixed_dictionaries(
    {},
    optional={"role": st.one_of(st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
                                awkward),
              "content": st.one_of(
                  st.text(max_size=200),
                  st.lists(st.fixed_dictionaries({}, optional={
                      "type": st.one_of(st.sampled_from(["text", "image_url", "input_audio"]), awkward),
                      "text": awkward, "image_url": awkward}), max_size=3),
                  awkward),
              "name": awkward, "tool_calls": awkward, "tool_call_id": awkward},
)
openai_body = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.just("mock-gpt"), awkward),
        "messages": st.one_of(st.lists(message, max_size=4), awkward),
        "prompt": st.one_of(st.text(max_size=200), st.lists(st.text(max_size=50), max_size=4), awkward),
        "input": st.one_of(st.text(max_size=200), st.lists(st.text(max_size=50), max_size=4), awkward),
        "max_tokens": awkward, "max_completion_tokens": awkward, "n": awkward,
        "stream": st.one_of(st.booleans(), awkward),
        "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": awkward}), awkward),
        "temperature": awkward, "tools": awkward, "tool_choice": awkward, "user": awkward,
        "response_format": awkward, "logit_bias": awkward, "stop": awkward,
    },
)


@st.composite
def duplicate_keys(draw: st.DrawFn) -> bytes:
    """A chat body whose fields appear twice, the second time with any value."""
    good = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
    field = draw(st.sampled_from(["model", "messages", "stream", "max_tokens"]))
    second = dumps(draw(awkward))
    return dumps(good)[:-1] + b', "' + field.encode() + b'": ' + second + b"}"


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """Containers nested far past any sane depth, closed or not."""
    depth = draw(st.sampled_from([17, 33, 100, 1024, 5_000, 50_000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"messages":[', b"]}")]))
    tail = draw(st.sampled_from([b"", b"1" + closer * depth]))
    return b'{"model": "m", "x": ' + opener * depth + tail + b"}"


@st.composite
def surrogates_and_digits(draw: st.DrawFn) -> bytes:
    """Lone surrogates (escaped and raw) and huge integers inside otherwise good bodies."""
    hostile = draw(st.sampled_from([
        b'"\\ud800"', b'"\\udfff x"', b'"a\\ud83d"', b'"\xed\xa0\x80"', b'"\xc0\xaf"',
        b"9" * 5_000, b"-" + b"1" * 4_300, b"1e999999", b"NaN", b"-Infinity", b"0x10",
    ]))
    where = draw(st.sampled_from([b"content", b"model", b"max_tokens", b"stream"]))
    if where == b"content":
        return b'{"model": "mock-gpt", "messages": [{"role": "user", "content": ' + hostile + b"}]}"
    return (b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "'
            + where + b'": ' + hostile + b"}")




@st.composite
def nearly_valid(draw: st.DrawFn) -> bytes:
    """A body each route accepts, with extra or changed fields of any type (reaches the guards,
    the limiter and the upstream)."""
    body: dict[str, Any] = {"model": "mock-gpt",
                            "messages": [{"role": "user", "content": draw(st.text(max_size=100))}],
                            "prompt": draw(st.text(min_size=1, max_size=100)),
                            "input": draw(st.lists(st.text(max_size=30), min_size=1, max_size=3))}
    body.update(draw(openai_body.filter(lambda b: not {"model", "messages", "prompt", "input"} & set(b))))
    return dumps(body, ascii_only=draw(st.booleans()))


bodies = st.one_of(
    nearly_valid(),
    st.binary(max_size=2_000),
    json_values.map(dumps),
    json_values.map(lambda v: dumps(v, ascii_only=False)),
    openai_body.map(dumps),
    openai_body.map(lambda v: dumps(v, ascii_only=False)),
    duplicate_keys(),
    deep_nesting(),
    surrogates_and_digits(),
)


@pytest.fixture
async def bridge_and_url(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession
) -> tuple[LoopBridge, aiohttp.ClientSession, str]:
    server = await make_sidecar()
    return LoopBridge(asyncio.get_running_loop()), session, str(server.make_url("")).rstrip("/")


async def test_any_body_gets_2xx_or_schema_4xx(
    bridge_and_url: tuple[LoopBridge, aiohttp.ClientSession, str],
) -> None:
    """Arbitrary bytes, JSON values, wrongly typed OpenAI fields, duplicate keys, deep nesting,
    lone surrogates and huge numbers never get a 5xx or a body outside the error schema."""
    bridge, session, base = bridge_and_url
    seen: list[int] = []

    @fuzz(300)
    @given(route=routes, body=bodies)
    def prop(route: str, body: bytes) -> None:
        status, answer, content_type = bridge.run(post(session, base + route, body))
        seen.append(status)
        assert_answer(status, answer, content_type)

    await in_thread(prop)
    assert any(s >= 400 for s in seen) and any(s < 300 for s in seen), sorted(set(seen))

