"""Request limits above 1,000 per window are counted in time buckets, not logged per request
(TEST-PLAN RL-4): never more than the limit in any window, >= 99 % of it admitted under 2x
offered load, a few KB per window whatever the limit, and every key expires (real Redis)."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import RateLimitExceeded
from sidecar.limits.headers import format_duration
from sidecar.limits.rules import COUNTER_ABOVE, build_plan
from sidecar.settings import LimitsSettings
from tests.conftest import RedisProcess
from tests.limits.conftest import LimiterFactory, principal, rule
from tests.limits.load import load_from_processes
from tests.limits.test_admit import command_calls, entries
from tests.limits.test_exactness import target  # noqa: F401  (fixture: single Redis and cluster)

GATE = 130  # RL-4: bytes per unit of limit a window may cost at most


def window_key(window_s: int) -> str:
    """The counted window of the load helpers' principal."""
    return "rl:{t:tenant-1}:k:key-1:" + str(window_s) + ":cnt"


def buckets(client: redis.Redis, key: str) -> int:
    """Time buckets held in a counted window (its fields but the sum and the oldest's index/time)."""
    return int(client.hlen(key)) - 3


def assert_consistent(client: redis.Redis, key: str) -> None:
    """A counted window's own bookkeeping: the running sum is the sum of its buckets, and "o" /
    "ol" name the oldest bucket and the time of its last admission."""
    fields = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
    total, oldest, oldest_last = int(fields.pop("")), int(fields.pop("o")), int(fields.pop("ol"))
    held = {int(index): tuple(map(int, value.split(":"))) for index, value in fields.items()}
    assert total == sum(count for count, _ in held.values())
    assert oldest == min(held) and oldest_last == held[oldest][1]
    lasts = [last for _, (_, last) in sorted(held.items())]
    assert lasts == sorted(lasts)  # buckets leave in index order


def most_in_any_window(times: list[int], window_ms: int) -> int:
    """The largest number of admissions inside one window (now - window, now] of Redis time."""
    times = sorted(times)
    best, first = 0, 0
    for last, now in enumerate(times):
        while times[first] <= now - window_ms:
            first += 1
        best = max(best, last - first + 1)
    return best


# -- which windows are counted, and their keys (pure) ------------------------------------------
def test_limits_above_1000_per_window_are_counted_and_up_to_1000_keep_the_exact_log() -> None:
    """1,000 requests/window is a log; 1,001 is bucketed counters (a hash of its own)."""
    settings = LimitsSettings(key=(rule(60, requests=COUNTER_ABOVE), rule(3600, requests=COUNTER_ABOVE + 1),
                                   rule(60, requests=5000, mode="shadow")))
    plan = build_plan(principal("k", "t"), settings)
    assert [(c.window_s, c.bucketed, c.keys) for c in plan.checks] == [
        (60, False, ("rl:{t:t}:k:k:60",)),
        (60, True, ("rl:{t:t}:k:k:60:shadow:cnt",)),
        (3600, True, ("rl:{t:t}:k:k:3600:cnt",))]
    assert plan.argv[::4] == ("r", "c", "c")


@given(st.text(), st.text(), st.text(), st.text(), st.booleans(), st.booleans())
def test_counter_keys_never_collide_with_each_other_or_a_log(t1: str, k1: str, t2: str, k2: str,
                                                              shadow1: bool, shadow2: bool) -> None:
    """Whatever the tenant and key ids, a counted window shares no key with another principal's
    window of either kind, and all its keys carry one hash tag."""
    def keys(tenant: str, key_id: str, limit: int, shadow: bool) -> set[str]:
        mode = "shadow" if shadow else "enforce"
        settings = LimitsSettings(key=(rule(60, requests=limit, mode=mode),))
        return set(build_plan(principal(key_id, tenant), settings).keys)

    counted = keys(t1, k1, 5000, shadow1)
    assert len(counted) == 1
    assert not counted & keys(t2, k2, 5, shadow2)
    same = (t1, k1, shadow1) == (t2, k2, shadow2)
    assert bool(counted & keys(t2, k2, 5000, shadow2)) == same


# -- one process --------------------------------------------------------------------------------
async def test_a_refusal_leaves_counted_windows_unchanged_and_says_when_to_retry(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """Multi-limit admission stays atomic with a counted window, and a full counted window
    refuses with Retry-After / reset = time until its oldest bucket leaves."""
    limiter = await make_limiter(key=(rule(60, requests=2000),), tenant=(rule(60, requests=3),))
    for i in range(3):
        admission = await limiter.admit(principal(), f"r{i}")
    assert admission.headers["x-ratelimit-remaining-requests"] == "0"  # the tenant's 3 are tighter
    before = entries(redis_proc.client())
    assert before[b"rl:{t:acme}:k:key1:60:cnt"][b""] == b"3"  # type: ignore[index]
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(principal(), "r3")
    assert "this tenant" in refused.value.message
    assert entries(redis_proc.client()) == before

    full = await make_limiter(key=(rule(60, requests=1001),))
    await asyncio.gather(*(full.admit(principal("k2"), f"s{i}") for i in range(1001)))
    with pytest.raises(RateLimitExceeded) as refused:
        await full.admit(principal("k2"), "one-more")
    headers = refused.value.headers
    assert headers["x-ratelimit-limit-requests"] == "1001"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    retry_ms = int(headers["retry-after-ms"])
    assert 55_000 <= retry_ms <= 60_000
    assert headers["Retry-After"] == str(-(-retry_ms // 1000))
    # One slot is missing: it frees when the oldest bucket leaves, which is also the reset time.
    assert headers["x-ratelimit-reset-requests"] == format_duration(retry_ms)
    assert "1001 requests per minute" in refused.value.message


async def test_a_client_that_waits_exactly_retry_after_on_a_counted_window_is_admitted(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """Retry-After of a full counted window is when its oldest bucket leaves; waiting it suffices,
    and the same principal is answered locally meanwhile (denial cache, RL-7)."""
    limiter = await make_limiter(key=(rule(1, requests=1001),))
    who = principal()
    await asyncio.gather(*(limiter.admit(who, f"r{i}") for i in range(1001)))
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(who, "over")
    wait = int(refused.value.headers["Retry-After"])
    assert wait == 1 and 0 < int(refused.value.headers["retry-after-ms"]) <= 1000
    calls = command_calls(redis_proc.client())["evalsha"]
    for i in range(50):
        with pytest.raises(RateLimitExceeded):
            await limiter.admit(who, f"again{i}")
    assert command_calls(redis_proc.client())["evalsha"] == calls  # + INFO only, no EVALSHA
    await asyncio.sleep(wait)  # the behaviour under test: waiting exactly Retry-After
    assert (await limiter.admit(who, "after")).redis_time_ms > 0


def duration_ms(text: str) -> int:
    """OpenAI's duration ("20ms", "4.95s", "1m0s") in ms."""
    if text.endswith("ms"):
        return int(text[:-2])
    minutes, _, seconds = text[:-1].rpartition("m")
    return int(minutes or 0) * 60_000 + round(float(seconds) * 1000)


async def test_a_lowered_limit_waits_until_enough_buckets_leave(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """1,500 counted, then the limit drops to 1,001: the retry time is when the bucket holding
    the 500th oldest request leaves, later than the reset time (the oldest bucket leaving)."""
    before = await make_limiter(key=(rule(5, requests=2000),))
    await asyncio.gather(*(before.admit(principal(), f"r{i}") for i in range(1500)))
    after = await make_limiter(key=(rule(5, requests=1001),))
    with pytest.raises(RateLimitExceeded) as refused:
        await after.admit(principal(), "over")
    headers = refused.value.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    fields = redis_proc.client().hgetall("rl:{t:acme}:k:key1:5:cnt")
    held = sorted((int(index), *map(int, value.split(b":"))) for index, value in fields.items()
                  if index not in (b"", b"o", b"ol"))
    assert sum(count for _, count, _ in held) == 1500
    freed, walked = 0, 0
    while freed < 500:  # oldest first, as the script walks them
        freed += held[walked][1]
        walked += 1
    print(f"\n{len(held)} buckets; the 500th oldest request is in bucket {walked}")
    reset_ms = duration_ms(headers["x-ratelimit-reset-requests"])
    retry_ms = int(headers["retry-after-ms"])
    assert retry_ms - reset_ms == held[walked - 1][2] - held[0][2]
    assert 0 < reset_ms <= retry_ms <= 5000


async def test_after_redis_time_steps_back_requests_count_in_the_oldest_later_bucket(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """A failover to a server whose clock is behind finds buckets "from the future": the request
    is counted in the oldest of them (held at least as long as it needs), never in a bucket
    older than a held one, so buckets still leave in index order."""
    client = redis_proc.client()
    seconds, micros = client.time()
    now = seconds * 1000 + micros // 1000
    key = "rl:{t:acme}:k:key1:60:cnt"
    ahead, ahead_last = now // 600 + 50, now + 30_000  # 30 s ahead (600 ms buckets)
    client.hset(key, mapping={"": 7, "o": ahead, "ol": ahead_last, str(ahead): f"7:{ahead_last}"})
    client.pexpire(key, 61_000)
    limiter = await make_limiter(key=(rule(60, requests=5000),))
    admission = await limiter.admit(principal(), "after-failover")
    assert admission.headers["x-ratelimit-remaining-requests"] == str(5000 - 8)
    assert 85_000 <= duration_ms(admission.headers["x-ratelimit-reset-requests"]) <= 90_000
    assert client.hget(key, str(ahead)) == f"8:{ahead_last}".encode()
    assert buckets(client, key) == 1
    assert_consistent(client, key)


async def test_shadow_counted_windows_count_would_be_refusals_but_never_refuse(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """A shadow limit of 1,001/min lets 1,050 requests through and reports 49 would-be refusals."""
    limiter = await make_limiter(key=(rule(60, requests=1001, mode="shadow"),),
                                 tenant=(rule(60, requests=5000),))
    admissions = await asyncio.gather(*(limiter.admit(principal(), f"r{i}") for i in range(1050)))
    assert sum(bool(a.shadow_refused) for a in admissions) == 49
    assert limiter.shadow_refusals == 49
    assert {a.shadow_refused for a in admissions} == {(), ("key:requests:60s",)}
    assert min(int(a.headers["x-ratelimit-remaining-requests"]) for a in admissions) == 5000 - 1050
    client = redis_proc.client()
    assert client.hget("rl:{t:acme}:k:key1:60:shadow:cnt", "") == b"1001"


async def test_bursts_across_window_edges_never_exceed_a_counted_limit(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """Random bursts from 4 clients over ~5 windows: never more than 1,200 admissions in any 1 s
    of Redis time, and the limit is reached in several windows (the log test, bucketed)."""
    limiter = await make_limiter(key=(rule(1, requests=1200),))
    rng = random.Random(7)
    times: list[int] = []
    refused = 0

    async def client(n: int) -> None:
        nonlocal refused
        for burst in range(10):
            size = rng.randint(20, 500)
            for outcome in await asyncio.gather(
                    *(limiter.admit(principal(), f"c{n}-{burst}-{i}") for i in range(size)),
                    return_exceptions=True):
                if isinstance(outcome, RateLimitExceeded):
                    refused += 1
                elif isinstance(outcome, BaseException):
                    raise outcome
                else:
                    times.append(outcome.redis_time_ms)
            await asyncio.sleep(rng.uniform(0.0, 0.8))  # paces the offered load across ~5 s

    await asyncio.gather(*(client(n) for n in range(4)))
    assert refused > 0 and len(times) > 2 * 1200  # the limit was reached, in more than one window
    assert most_in_any_window(times, 1000) <= 1200
    assert_consistent(redis_proc.client(), "rl:{t:acme}:k:key1:1:cnt")


# -- several processes --------------------------------------------------------------------------
def test_10k_per_minute_from_4_processes_admits_exactly_the_limit_in_a_few_kilobytes(
        target: tuple[str, redis.Redis]) -> None:  # noqa: F811
    """12,000 requests at once from 4 processes against 10,000/min: exactly 10,000 admitted; the
    window costs about 1 % of the RL-4 gate (130 B x limit) and expires within window + 1 s."""
    url, client = target
    limit = 10_000
    ids = [[f"p{p}-r{i}" for i in range(3000)] for p in range(4)]
    runs = load_from_processes(url, ids, key=(rule(60, requests=limit),), concurrency=64)
    codes = [code for outcomes, _, _ in runs for _, code, _ in outcomes]
    assert codes.count("ok") == limit
    assert codes.count("rate_limit_exceeded") == 2000
    key = window_key(60)
    assert int(client.hget(key, "")) == limit
    assert 1 <= buckets(client, key) <= 101
    used = client.memory_usage(key, samples=0)
    print(f"\ncounted 10,000/min window, full: {used} B (log: ~1,291,040 B)")
    assert used <= GATE * limit // 100
    ttls = {key: client.pttl(key) for key in client.scan_iter()}  # + each warm-up key
    assert len(ttls) == 1 + len(ids) and all(0 < ttl <= 61_000 for ttl in ttls.values()), ttls


def test_twice_the_limit_offered_from_4_processes_admits_over_99_percent_never_more(
        redis_proc: RedisProcess) -> None:
    """2x a 2,000/s limit offered for 4 s from 4 processes: >= 99 % of the limit admitted in each
    of 3 whole windows, never more than 2,000 in any 1 s, at most 101 buckets, keys expiring."""
    client = redis_proc.client()
    client.flushall()
    limit, window_ms, processes, seconds = 2000, 1000, 4, 4
    rate = 2 * limit / (window_ms / 1000) / processes  # per process
    ids = [[f"p{p}-r{i}" for i in range(int(rate * seconds))] for p in range(processes)]
    runs = load_from_processes(redis_proc.url, ids, key=(rule(1, requests=limit),),
                               concurrency=16, rate=rate)
    times = sorted(ms for outcomes, _, _ in runs for _, code, ms in outcomes if code == "ok")
    offered = sum(len(outcomes) for outcomes, _, _ in runs) / max(elapsed for _, elapsed, _ in runs)
    store_calls = sum(calls for _, _, calls in runs)
    windows = 3
    admitted = sum(1 for ms in times if ms < times[0] + windows * window_ms)
    print(f"\noffered {offered:.0f}/s against {limit}/s; admitted {admitted / (windows * limit):.4f} "
          f"of the limit in {windows} windows; {store_calls} store calls for {len(ids) * len(ids[0])}")
    assert offered >= 1.5 * limit  # planned 2x; a stalled process sends its backlog late
    assert most_in_any_window(times, window_ms) <= limit
    assert admitted >= 0.99 * windows * limit
    key = window_key(1)
    assert 1 <= buckets(client, key) <= 101
    used = client.memory_usage(key, samples=0)
    print(f"2,000/s window after the run: {buckets(client, key)} buckets, {used} B")
    assert_consistent(client, key)
    assert used <= 8192
    assert 0 < client.pttl(key) <= 2000
