"""Token windows: reservations that left the window count for nothing, whether or not they were
deleted yet, and an admission costs a fixed handful of Redis commands.

The expiry tests wait for a 1-second window to pass: expiry is the behaviour under test.
"""

from __future__ import annotations

import asyncio

from tests.conftest import RedisProcess
from tests.limits.conftest import LimiterFactory, principal, rule


def command_calls(redis_proc: RedisProcess) -> int:
    stats = redis_proc.client().info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


async def test_reservations_that_left_count_for_nothing_and_are_deleted_once_eight_gathered(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """Three reservations that left a 1 s window stay stored but free their tokens; once ten
    have left they are deleted and the stored sum is the window's."""
    limiter = await make_limiter(key=(rule(1, tokens=1000),))
    client = redis_proc.client()
    zkey, hkey = limiter.plan(principal()).token_keys
    for i in range(3):
        await limiter.admit(principal(), f"a{i}", 300)
    await asyncio.sleep(1.05)
    fresh = await limiter.admit(principal(), "b0", 100)
    assert fresh.headers["x-ratelimit-remaining-tokens"] == "900"
    assert client.zcard(zkey) == 4  # the three that left are still stored
    for i in range(7):
        await limiter.admit(principal(), f"c{i}", 100)
    await asyncio.sleep(1.05)
    last = await limiter.admit(principal(), "d0", 50)
    assert last.headers["x-ratelimit-remaining-tokens"] == "950"
    assert client.zrange(zkey, 0, -1) == [b"d0"]
    assert client.hgetall(hkey) == {b"d0": b"50", b"": b"50"}


async def test_a_settled_reservation_that_left_changes_nothing_in_the_window(
        make_limiter: LimiterFactory) -> None:
    """Settling a reservation after it left the window (not yet deleted) frees nothing twice and
    charges nothing to the window."""
    limiter = await make_limiter(key=(rule(1, tokens=1000),))
    old = await limiter.admit(principal(), "old", 400)
    await asyncio.sleep(1.05)
    await limiter.settle(old, 999)
    now = await limiter.admit(principal(), "now", 100)
    assert now.headers["x-ratelimit-remaining-tokens"] == "900"


async def test_an_admission_with_a_counted_window_and_a_token_window_costs_eight_commands(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """Steady state, many reservations in the window: EVALSHA, TIME, HMGET + HSET for the counted
    request window, ZRANGE, HMGET, ZADD, HSET (+ PTTL) for the token window; the settlement is
    EVALSHA, HMGET, HSET."""
    limiter = await make_limiter(key=(rule(60, requests=10**9, tokens=10**12),))
    for i in range(50):
        await limiter.admit(principal(), f"w{i}", 10)
    before = command_calls(redis_proc)
    admissions = [await limiter.admit(principal(), f"r{i}", 10) for i in range(200)]
    per_admission = (command_calls(redis_proc) - before) / 200
    assert per_admission <= 9.05, per_admission
    before = command_calls(redis_proc)
    for admission in admissions:
        await limiter.settle(admission, 7)
    assert (command_calls(redis_proc) - before) / 200 <= 3.01


async def test_keys_outlive_their_newest_admission_by_a_window_though_ttls_refresh_per_tick(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """Admissions every 30 ms for over 2 s (TTLs are refreshed at most once per half second): right
    after the last one every key lives between its window minus half a second and its window
    plus 1 s more."""
    limiter = await make_limiter(key=(rule(2, requests=5000, tokens=10**9),
                                      rule(3, requests=500)))
    client = redis_proc.client()
    for i in range(70):
        await limiter.admit(principal(), f"r{i}", 10)
        await asyncio.sleep(0.03)  # the pace of the traffic under test
    plan = limiter.plan(principal())
    windows = {key: check.window_s * 1000 for check in plan.checks for key in check.keys}
    assert len(windows) == 4  # counted requests, a request log, reservations and amounts
    ttls = {key: client.pttl(key) for key in windows}
    assert all(windows[key] - 500 <= ttl <= windows[key] + 1000 for key, ttl in ttls.items()), ttls
