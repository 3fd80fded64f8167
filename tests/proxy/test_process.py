"""The sidecar as a process: graceful SIGTERM during a stream, and --workers N."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.test_utils import TestServer

from tests.procs import SidecarProcess
from tests.proxy.test_upstream import chat, read_event


async def test_sigterm_lets_the_stream_finish_then_exits_0(
    mock_upstream: TestServer, redis_url: str, auth_headers: dict[str, str],
) -> None:
    """SIGTERM during a streaming response: the stream completes, then the process exits 0."""
    sidecar = SidecarProcess({"SIDECAR_UPSTREAM_URL": str(mock_upstream.make_url("")).rstrip("/"),
                              "SIDECAR_STORE_URL": redis_url})
    await sidecar.start()
    async with aiohttp.ClientSession(headers=auth_headers) as session:
        async with session.post(sidecar.url + "/v1/chat/completions",
                                json=chat("mock-slow-stream", True, "x")) as response:
            await read_event(response.content)
            assert sidecar.proc is not None
            sidecar.proc.terminate()
            # Readiness turns off while draining (the stream is still open).
            while True:
                try:
                    async with session.get(sidecar.metrics_url + "/readyz") as ready:
                        if ready.status == 503:
                            break
                except aiohttp.ClientError:
                    break
                await asyncio.sleep(0.02)
            async with session.post(mock_upstream.make_url("/_mock/release")):
                pass
            rest = await response.content.read()
    assert rest.rstrip().endswith(b"data: [DONE]")
    assert b'"error"' not in rest
    status, err = await sidecar.stop()
    assert status == 0
    assert "Traceback" not in err


async def test_two_workers_share_the_port(mock_upstream: TestServer, redis_url: str,
                                          auth_headers: dict[str, str]) -> None:
    """With --workers 2, both processes serve the proxy port and stop cleanly on SIGTERM."""
    sidecar = SidecarProcess({"SIDECAR_UPSTREAM_URL": str(mock_upstream.make_url("")).rstrip("/"),
                              "SIDECAR_STORE_URL": redis_url}, args=("--workers", "2"))
    await sidecar.start()
    async with aiohttp.ClientSession(headers=auth_headers) as session:
        statuses = []
        for _ in range(20):
            async with session.post(sidecar.url + "/v1/chat/completions",
                                    json=chat("mock-gpt")) as response:
                statuses.append(response.status)
    assert statuses == [200] * 20
    status, err = await sidecar.stop()
    assert status == 0, err
