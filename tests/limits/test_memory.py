"""Memory of one key's request log at high limits (RL-4 gate: at most 130 bytes per entry)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import RedisProcess
from tests.limits.conftest import LimiterFactory, principal, rule


@pytest.mark.parametrize("limit", [1000, 10_000])
async def test_a_full_window_costs_at_most_130_bytes_per_entry(
        make_limiter: LimiterFactory, redis_proc: RedisProcess, limit: int) -> None:
    """A request log filled to its limit stays under 130 B per entry (MEMORY USAGE)."""
    limiter = await make_limiter(key=(rule(60, requests=limit),))
    ids = iter(range(limit))

    async def worker() -> None:
        for i in ids:
            await limiter.admit(principal(), f"req_{i:024x}")  # sidecar-shaped ids, 28 bytes

    await asyncio.gather(*(worker() for _ in range(32)))
    client = redis_proc.client()
    key = "rl:{t:acme}:k:key1:60"
    assert client.zcard(key) == limit
    used = client.memory_usage(key, samples=0)
    print(f"\nMEMORY USAGE at limit {limit}: {used} B ({used / limit:.1f} B/entry)")
    assert used <= 130 * limit
