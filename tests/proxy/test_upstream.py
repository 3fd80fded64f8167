"""What reaches the provider, and how the provider's failures reach the client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import SidecarFactory, free_port

CHAT = "/v1/chat/completions"


def chat(model: str, stream: bool = False, content: str = "hi") -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]}


async def received(session: aiohttp.ClientSession, mock: TestServer) -> dict[str, Any]:
    async with session.get(mock.make_url("/_mock/requests")) as response:
        data: dict[str, Any] = await response.json()
        return data


async def test_provider_gets_provider_key_never_client_credentials(
    make_sidecar: SidecarFactory, mock_upstream: TestServer, session: aiohttp.ClientSession,
    provider_key: str, api_key: str,
) -> None:
    """The client's key, cookies and hop-by-hop headers stay in the pod; the provider key goes out."""
    sidecar = await make_sidecar()
    client_secret = "client-" + str(time.time_ns())
    headers = {
        "Authorization": f"Bearer {api_key}", "X-Other-Key": client_secret,
        "Cookie": f"session={client_secret}", "Proxy-Authorization": f"Basic {client_secret}",
        "Connection": "keep-alive, X-Hop", "X-Hop": client_secret, "TE": "trailers",
        "X-Forwarded-For": "10.0.0.1", "OpenAI-Beta": "assistants=v2",
    }
    for path, body in ((CHAT, chat("mock-gpt")), ("/v1/embeddings", {"model": "e", "input": "x"})):
        async with session.post(sidecar.make_url(path), json=body, headers=headers) as response:
            assert response.status == 200
    async with session.get(sidecar.make_url("/v1/models"), headers=headers) as response:
        assert response.status == 200
    seen = (await received(session, mock_upstream))["requests"]
    assert len(seen) == 3
    for request in seen:
        sent = {k.lower(): v for k, v in request["headers"].items()}
        assert sent["authorization"] == f"Bearer {provider_key}"
        assert client_secret not in orjson.dumps(sent).decode()
        assert api_key not in orjson.dumps(sent).decode()
        for name in ("cookie", "x-api-key", "x-other-key", "proxy-authorization", "x-hop", "te",
                     "x-forwarded-for"):
            assert name not in sent
        assert sent["openai-beta"] == "assistants=v2"


async def test_upstream_down_is_502(make_sidecar: SidecarFactory,
                                    session: aiohttp.ClientSession) -> None:
    """Nothing listening upstream: 502 upstream_error."""
    sidecar = await make_sidecar(upstream_url=f"http://127.0.0.1:{free_port()}")
    async with session.post(sidecar.make_url(CHAT), json=chat("mock-gpt")) as response:
        assert response.status == 502
        assert (await response.json())["error"]["code"] == "upstream_error"


@pytest.mark.parametrize("deadlines", [
    {"upstream_read_timeout_s": "0.5"},  # no first byte within the read timeout
    {"upstream_total_timeout_s": "0.5", "upstream_read_timeout_s": "30"},  # whole exchange
], ids=["read timeout", "total timeout"])
async def test_upstream_hang_is_504_when_a_deadline_passes(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession, deadlines: dict[str, str],
) -> None:
    """A provider that never answers gives 504 upstream_timeout once the first deadline passes."""
    sidecar = await make_sidecar(**deadlines)
    started = time.monotonic()
    async with session.post(sidecar.make_url(CHAT), json=chat("mock-hang")) as response:
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "upstream_timeout"
    assert 0.5 <= time.monotonic() - started < 5


async def test_whole_exchange_deadline_ends_a_stalled_stream_in_an_error_event(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession,
) -> None:
    """A stream that stalls past upstream.total_timeout_s ends with an SSE error and [DONE]."""
    sidecar = await make_sidecar(upstream_total_timeout_s="0.5", upstream_read_timeout_s="30")
    async with session.post(sidecar.make_url(CHAT),
                            json={**chat("mock-slow-stream"), "stream": True}) as response:
        assert response.status == 200
        text = await response.text()
    assert '"upstream_timeout"' in text
    assert text.rstrip().endswith("data: [DONE]")


@pytest.mark.parametrize(("model", "status", "code"), [
    ("mock-error-500", 502, "upstream_error"),
    ("mock-bad-json", 502, "upstream_error"),
    ("mock-redirect", 502, "upstream_error"),
])
async def test_provider_faults_become_502_without_the_provider_body(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession, model: str, status: int,
    code: str,
) -> None:
    """Provider 5xx, garbage and redirects become a clean 502; the provider's body stays out."""
    sidecar = await make_sidecar()
    async with session.post(sidecar.make_url(CHAT), json=chat(model)) as response:
        assert response.status == status
        body = await response.text()
    assert orjson.loads(body)["error"]["code"] == code
    assert "Traceback" not in body and "boom" not in body and "not json" not in body


async def test_provider_4xx_is_relayed_scrubbed(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession,
) -> None:
    """A provider 400 reaches the client with its error code, but key-like text is scrubbed."""
    sidecar = await make_sidecar()
    async with session.post(sidecar.make_url(CHAT), json=chat("mock-error-400")) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "invalid_value"
    assert "temperature" in error["message"]
    assert "sk-mock" not in error["message"] and "***" in error["message"]
    assert error["request_id"].startswith("req_")


async def test_provider_429_keeps_retry_after(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession,
) -> None:
    """A provider 429 is relayed with its Retry-After, so client backoff works."""
    sidecar = await make_sidecar()
    async with session.post(sidecar.make_url(CHAT), json=chat("mock-429")) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"


async def read_event(stream: aiohttp.StreamReader) -> bytes:
    """Read one SSE event (up to its blank line)."""
    lines = []
    while True:
        line = await asyncio.wait_for(stream.readline(), 10)
        if line in (b"\n", b""):
            return b"".join(lines)
        lines.append(line)


async def test_slow_stream_reaches_the_client_incrementally(
    make_sidecar: SidecarFactory, mock_upstream: TestServer, session: aiohttp.ClientSession,
) -> None:
    """Events arrive while the provider is still streaming: the first before the provider's last."""
    sidecar = await make_sidecar()
    async with session.post(sidecar.make_url(CHAT),
                            json=chat("mock-slow-stream", True, "a b c")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first = await read_event(response.content)
        assert b"chat.completion.chunk" in first
        # The provider is still holding its last event: release it now.
        async with session.post(mock_upstream.make_url("/_mock/release")) as released:
            assert released.status == 200
        rest = await response.content.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert b'sidecar.' in rest and b'sidecar.' not in first  # the last word came after the release


async def test_truncated_stream_ends_with_error_event(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession,
) -> None:
    """A provider stream that stops without [DONE] ends in an SSE error event, then [DONE]."""
    sidecar = await make_sidecar()
    async with session.post(sidecar.make_url(CHAT),
                            json=chat("mock-truncated-stream", True, "a b c d")) as response:
        text = (await response.read()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    error = orjson.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_error"


async def test_stream_timeout_ends_with_error_event(
    make_sidecar: SidecarFactory, session: aiohttp.ClientSession,
) -> None:
    """A provider that stalls mid-stream past the read timeout ends in a 504-coded error event."""
    sidecar = await make_sidecar(upstream_read_timeout_s="0.5")
    async with session.post(sidecar.make_url(CHAT),
                            json=chat("mock-slow-stream", True, "a b c")) as response:
        text = (await response.read()).decode()
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert orjson.loads(events[-2].removeprefix("data: "))["error"]["code"] == "upstream_timeout"


async def test_client_disconnect_cancels_the_upstream_call(
    make_sidecar: SidecarFactory, mock_upstream: TestServer, session: aiohttp.ClientSession,
) -> None:
    """When the client goes away mid-stream, the sidecar closes its provider stream too."""
    sidecar = await make_sidecar()
    response = await session.post(sidecar.make_url(CHAT), json=chat("mock-slow-stream", True, "a b"))
    await read_event(response.content)
    assert (await received(session, mock_upstream))["open_streams"] == 1
    response.close()  # the client disconnects
    deadline = time.monotonic() + 10
    while (await received(session, mock_upstream))["open_streams"] != 0:
        assert time.monotonic() < deadline, "the provider stream was never closed"
        await asyncio.sleep(0.02)
