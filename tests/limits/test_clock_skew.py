"""RL-2: sidecars whose clocks are 30 s off admit exactly what sidecars with true clocks admit,
because every window is measured on Redis time (real processes under libfaketime)."""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from pathlib import Path

import aiohttp

from tests.conftest import create_key
from tests.procs import SidecarProcess

LUA = Path(__file__).resolve().parents[2] / "sidecar" / "store" / "lua"
LIMIT = 20


def test_every_script_that_needs_the_time_asks_redis() -> None:
    """Static check: a script that works with the current time reads `redis.call('TIME')`;
    none takes a time argument from its caller's clock."""
    for script in LUA.glob("*.lua"):
        source = script.read_text()
        if re.search(r"\bnow", source):
            assert "redis.call('TIME')" in source, script.name
        assert not re.search(r"ARGV\[\d+\]\s+(now|time|timestamp)", source, re.I), script.name


def skewed(env: dict[str, str], offset: str) -> dict[str, str]:
    """The process's wall clock runs `offset` off (libfaketime, Debian package faketime);
    monotonic clocks stay true, as on a real host with a wrong NTP setting."""
    libraries = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    assert libraries, "libfaketime is missing: apt-get install faketime (.ci/run does)"
    return {**env, "LD_PRELOAD": str(libraries[0]), "FAKETIME": offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


async def test_skewed_sidecars_admit_exactly_the_limit(
        redis_url: str, mock_upstream: object) -> None:
    """4 sidecars on one Redis, two of them 30 s ahead and behind: 80 requests against a
    limit of 20 per minute admit exactly 20, as an unskewed fleet does."""
    upstream = str(mock_upstream.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    env = {"SIDECAR_STORE_URL": redis_url, "SIDECAR_UPSTREAM_URL": upstream,
           "SIDECAR_LOG_LEVEL": "WARNING"}
    key = await create_key(redis_url, limits=[{"window_s": 60, "requests": LIMIT}])
    fleet = [SidecarProcess(env), SidecarProcess(skewed(env, "+30s")),
             SidecarProcess(env), SidecarProcess(skewed(env, "-30s"))]
    await asyncio.gather(*(s.start() for s in fleet))
    try:
        async with aiohttp.ClientSession() as session:
            skew = [await clock_offset(session, s.url) for s in fleet]
            assert [round(s / 30) for s in skew] == [0, 1, 0, -1], skew  # the skew is real

            async def chat(i: int) -> int:
                async with session.post(
                        fleet[i % 4].url + "/v1/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": "mock-echo", "messages": [{"role": "user", "content": f"n{i}"}]},
                ) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(chat(i) for i in range(4 * LIMIT)))
        assert statuses.count(200) == LIMIT
        assert statuses.count(429) == 3 * LIMIT
    finally:
        for sidecar in fleet:
            await sidecar.stop()


async def clock_offset(session: aiohttp.ClientSession, url: str) -> float:
    """The sidecar's wall clock minus ours, from its Date header (seconds)."""
    async with session.get(url + "/v1/models") as response:
        await response.read()
        date = email.utils.parsedate_to_datetime(response.headers["Date"])
    return date.timestamp() - time.time()
