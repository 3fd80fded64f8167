"""Server-Timing: every answer tells the app the sidecar's own time and the provider's."""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from sidecar.mock_upstream import create_mock_app
from tests.conftest import SidecarFactory

TIMING = re.compile(r"sidecar;dur=(\d+\.\d\d)(?:, upstream;dur=(\d+\.\d\d))?")
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Hello"}]}


def _timing(headers: Any) -> tuple[float, float | None]:
    match = TIMING.fullmatch(headers["Server-Timing"])
    assert match, headers["Server-Timing"]
    return float(match[1]), float(match[2]) if match[2] else None


async def test_server_timing_splits_sidecar_and_provider_time(
        make_sidecar: SidecarFactory, aiohttp_server: Any, auth_headers: dict[str, str]) -> None:
    """With a provider that takes 80 ms, the header's upstream part is at least 80 ms and the two
    parts together are no more than the client waited, for whole answers and for streams."""
    slow: TestServer = await aiohttp_server(create_mock_app(latency_ms=80))
    server = await make_sidecar(upstream_url=str(slow.make_url("")).rstrip("/"))
    async with aiohttp.ClientSession(headers=auth_headers) as session:
        for body in (BODY, {**BODY, "stream": True}):
            started = time.perf_counter()
            async with session.post(server.make_url("/v1/chat/completions"), json=body) as response:
                assert response.status == 200
                own, upstream = _timing(response.headers)
                await response.read()
            waited_ms = (time.perf_counter() - started) * 1000
            assert upstream is not None and upstream >= 80
            assert 0 <= own and own + upstream <= waited_ms


async def test_refusals_carry_only_the_sidecar_time(make_sidecar: SidecarFactory) -> None:
    """A request the sidecar refuses itself (no key: 401) never reached the provider: only
    `sidecar` is in the header."""
    server = await make_sidecar()
    async with aiohttp.ClientSession() as session, \
            session.post(server.make_url("/v1/chat/completions"), json=BODY) as response:
        assert response.status == 401
        own, upstream = _timing(response.headers)
        assert upstream is None and own >= 0
