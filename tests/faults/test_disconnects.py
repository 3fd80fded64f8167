"""1,000 clients that disconnect mid-stream: every provider stream is closed, and the sidecar's
memory and file descriptors return to their baseline."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import create_key
from tests.procs import SidecarProcess
from tests.proxy.test_upstream import read_event

pytestmark = pytest.mark.faults
CLIENTS = 1000
BODY = {"model": "mock-slow-stream", "stream": True,
        "messages": [{"role": "user", "content": "tell me a story"}]}


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1])


async def open_streams(mock: TestServer) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.get(mock.make_url("/_mock/requests")) as response:
            return int((await response.json())["open_streams"])


async def test_thousand_disconnects_leave_nothing_behind(mock_upstream: TestServer,
                                                         redis_url: str) -> None:
    """Each client reads the first event and goes away; the sidecar closes every provider
    stream, and its fds and RSS come back to where they were (RSS within 10 MiB)."""
    key = await create_key(redis_url, limits=[{"window_s": 3600, "tokens": 10**9}])
    sidecar = SidecarProcess({"SIDECAR_STORE_URL": redis_url, "SIDECAR_LOG_LEVEL": "WARNING",
                              "SIDECAR_UPSTREAM_URL": str(mock_upstream.make_url("")).rstrip("/")})
    await sidecar.start()
    try:
        assert sidecar.proc is not None
        pid = sidecar.proc.pid
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector,
                                         headers={"Authorization": f"Bearer {key}"}) as session:

            async def one() -> None:
                response = await session.post(sidecar.url + "/v1/chat/completions", json=BODY)
                await read_event(response.content)
                response.close()  # gone mid-stream

            await asyncio.gather(*(one() for _ in range(50)))  # warm-up: pools, caches
            await wait_until(lambda: open_streams(mock_upstream), 0)
            base_fds, base_rss = fds(pid), rss_kib(pid)
            for _ in range(CLIENTS // 100):
                await asyncio.gather(*(one() for _ in range(100)))
        await wait_until(lambda: open_streams(mock_upstream), 0)
        await wait_until(lambda: fds_async(pid), base_fds, tolerance=5)
        grown_kib = rss_kib(pid) - base_rss
        print(f"fds {base_fds} -> {fds(pid)}, RSS +{grown_kib} KiB after {CLIENTS} disconnects")
        assert grown_kib < 10 * 1024
    finally:
        status, _ = await sidecar.stop()
    assert status == 0


async def fds_async(pid: int) -> int:
    return fds(pid)


async def wait_until(probe: Callable[[], Awaitable[int]], expected: int, tolerance: int = 0,
                     within_s: float = 15.0) -> None:
    """Poll `probe()` until it is within `tolerance` of `expected` (a condition, not a sleep)."""
    deadline = time.monotonic() + within_s
    while True:
        value = await probe()
        if abs(value - expected) <= tolerance:
            return
        assert time.monotonic() < deadline, f"still {value}, expected {expected}"
        await asyncio.sleep(0.05)
