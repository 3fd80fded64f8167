"""Memory of one full request window at high limits (RL-4 gate: at most 130 bytes per unit of
limit). Up to 1,000 per window it is the exact log (one entry per request); above, bucketed
counters whose size does not grow with the limit."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import RedisProcess
from tests.limits.conftest import LimiterFactory, principal, rule


@pytest.mark.parametrize("limit", [1000, 10_000, 100_000])
async def test_a_full_window_costs_at_most_130_bytes_per_unit_of_limit(
        make_limiter: LimiterFactory, redis_proc: RedisProcess, limit: int) -> None:
    """A request window filled to its limit stays under 130 B x limit (MEMORY USAGE of its keys);
    a counted one (limit > 1,000) under 1 % of that."""
    limiter = await make_limiter(key=(rule(60, requests=limit),))
    ids = iter(range(limit))

    async def worker() -> None:
        for i in ids:
            await limiter.admit(principal(), f"req_{i:024x}")  # sidecar-shaped ids, 28 bytes

    await asyncio.gather(*(worker() for _ in range(32)))
    client = redis_proc.client()
    keys = limiter.plan(principal()).keys
    used = sum(client.memory_usage(key, samples=0) for key in keys)
    print(f"\nMEMORY USAGE at limit {limit}: {used} B ({used / limit:.2f} B per unit of limit)")
    if limit <= 1000:
        assert keys == ("rl:{t:acme}:k:key1:60",)
        assert client.zcard(keys[0]) == limit
        assert used <= 130 * limit
    else:
        assert keys == ("rl:{t:acme}:k:key1:60:cnt",)
        assert int(client.hget(keys[0], "")) == limit
        assert used <= 130 * limit // 100
