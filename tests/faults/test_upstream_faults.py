"""Upstream resets, stalls and slow links: every client gets a well-formed answer, and token
reservations are settled for what was streamed or refunded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from sidecar.limits.tokens import prompt_tokens
from sidecar.mock_upstream import DEFAULT_REPLY, split_reply
from tests.conftest import RedisProcess, SidecarFactory, create_key
from tests.faults.proxy import FaultProxy
from tests.proxy.test_limits_http import settled
from tests.proxy.test_upstream import read_event

pytestmark = pytest.mark.faults
CHAT = "/v1/chat/completions"


def chat(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": 40,
            "messages": [{"role": "user", "content": "one two three four five"}]}


@pytest.fixture
async def upstream_via_proxy(mock_upstream: TestServer) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", mock_upstream.port)
    await proxy.start()
    yield proxy
    await proxy.close()


def sse_events(text: str) -> list[str]:
    return [e for e in text.split("\n\n") if e]


async def test_reset_mid_stream_ends_well_formed_and_charges_what_was_streamed(
    make_sidecar: SidecarFactory, upstream_via_proxy: FaultProxy, mock_upstream: TestServer,
    redis_url: str, redis_proc: RedisProcess,
) -> None:
    """The provider's connection is reset mid-stream: the client gets an SSE error event and
    [DONE], and the reservation becomes the prompt plus what was streamed (not the estimate)."""
    key = await create_key(redis_url, limits=[{"window_s": 3600, "tokens": 100_000}])
    sidecar = await make_sidecar(upstream_url=f"http://127.0.0.1:{upstream_via_proxy.port}")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(sidecar.make_url(CHAT), json=chat("mock-slow-stream", True)) as response:
            request_id = response.headers["X-Request-Id"]
            first = await read_event(response.content)
            upstream_via_proxy.set_mode("reset")
            rest = (await response.read()).decode()
        async with session.post(mock_upstream.make_url("/_mock/release")):
            pass
    events = sse_events(rest)
    assert b"chat.completion.chunk" in first
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[-2].removeprefix("data: "))["error"]["code"] == "upstream_error"
    # The mock streams every word but the last before it waits: those were generated.
    streamed = "".join(split_reply(DEFAULT_REPLY)[:-1])
    expected = prompt_tokens("chat", chat("mock-slow-stream", True)) + (len(streamed) + 3) // 4
    charged = await settled(redis_proc, request_id, expected)
    assert charged == expected < 40  # the prompt and what was streamed, not the reservation


@pytest.mark.parametrize("stream", [False, True])
async def test_reset_before_the_answer_is_refunded(
    make_sidecar: SidecarFactory, upstream_via_proxy: FaultProxy, redis_url: str,
    redis_proc: RedisProcess, stream: bool,
) -> None:
    """A provider that resets before answering gives a clean 502 and leaves nothing charged."""
    key = await create_key(redis_url, limits=[{"window_s": 3600, "tokens": 100_000}])
    sidecar = await make_sidecar(upstream_url=f"http://127.0.0.1:{upstream_via_proxy.port}")
    upstream_via_proxy.set_mode("reset")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(sidecar.make_url(CHAT), json=chat("mock-gpt", stream)) as response:
            assert response.status == 502
            assert (await response.json())["error"]["code"] == "upstream_error"
            request_id = response.headers["X-Request-Id"]
    assert await settled(redis_proc, request_id, None) is None


async def test_black_holed_upstream_times_out_cleanly(
    make_sidecar: SidecarFactory, upstream_via_proxy: FaultProxy, api_key: str,
) -> None:
    """A provider link that swallows everything gives 504 after the read timeout."""
    sidecar = await make_sidecar(upstream_url=f"http://127.0.0.1:{upstream_via_proxy.port}",
                                 upstream_read_timeout_s="0.5")
    upstream_via_proxy.set_mode("blackhole")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as session:
        async with session.post(sidecar.make_url(CHAT), json=chat("mock-gpt", False)) as response:
            assert response.status == 504
            assert (await response.json())["error"]["code"] == "upstream_timeout"


async def test_slow_link_still_delivers(
    make_sidecar: SidecarFactory, upstream_via_proxy: FaultProxy, api_key: str,
) -> None:
    """A slow (delayed) provider link is just slow: the stream completes normally."""
    sidecar = await make_sidecar(upstream_url=f"http://127.0.0.1:{upstream_via_proxy.port}")
    upstream_via_proxy.delay_s = 0.02
    upstream_via_proxy.set_mode("delay")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as session:
        async with session.post(sidecar.make_url(CHAT), json=chat("mock-gpt", True)) as response:
            text = await response.text()
    assert sse_events(text)[-1] == "data: [DONE]" and '"error"' not in text
