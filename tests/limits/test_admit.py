"""Admission on a real redis-server: limits, atomicity, Retry-After, settlement, one round trip."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis
import redis.asyncio as aioredis

from sidecar.errors import RateLimitExceeded, TokenQuotaExceeded
from sidecar.limits import Limiter
from tests.conftest import RedisProcess
from tests.limits.conftest import LimiterFactory, principal, rule


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since start, from INFO commandstats."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def entries(client: redis.Redis, pattern: str = "*") -> dict[bytes, object]:
    """Every limiter key's content (zsets with scores, hashes), to compare before and after."""
    out: dict[bytes, object] = {}
    for key in client.scan_iter(pattern):
        if client.type(key) == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = client.hgetall(key)
    return out


async def test_admits_up_to_the_limit_then_refuses_with_openai_headers(make_limiter: LimiterFactory) -> None:
    """The 4th request against 3/min is a 429 rate_limit_exceeded with Retry-After and x-ratelimit-*."""
    limiter = await make_limiter(key=(rule(60, requests=3),))
    who = principal()
    admitted = [await limiter.admit(who, f"r{i}") for i in range(3)]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in admitted] == ["2", "1", "0"]
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(who, "r3")
    assert refused.value.code == "rate_limit_exceeded" and refused.value.status == 429
    headers = refused.value.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 59 <= int(headers["Retry-After"]) <= 60
    assert "3 requests per minute" in refused.value.message


async def test_a_request_refused_by_the_tenant_limit_leaves_the_keys_windows_unchanged(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """Multi-limit admission is atomic: a refusal by any window records nothing in the others."""
    limiter = await make_limiter(key=(rule(60, requests=10, tokens=1000),), tenant=(rule(60, requests=2),))
    await limiter.admit(principal("k1"), "a", 10)
    await limiter.admit(principal("k1"), "b", 10)
    before = entries(redis_proc.client())
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(principal("k2"), "c", 10)
    assert "this tenant" in refused.value.message
    assert entries(redis_proc.client()) == before
    assert not redis_proc.client().exists("rl:{t:acme}:k:k2:60")


async def test_a_client_that_waits_exactly_retry_after_is_admitted(make_limiter: LimiterFactory) -> None:
    """Retry-After is the time until enough entries leave the window, rounded up to seconds."""
    limiter = await make_limiter(key=(rule(2, requests=2),))
    who = principal()
    await limiter.admit(who, "r1")
    await limiter.admit(who, "r2")
    with pytest.raises(RateLimitExceeded) as refused:
        await limiter.admit(who, "r3")
    wait = int(refused.value.headers["Retry-After"])
    assert 1 <= wait <= 2
    await asyncio.sleep(wait)  # the behaviour under test: waiting exactly Retry-After
    assert (await limiter.admit(who, "r4")).redis_time_ms > 0


async def test_settle_records_actual_usage_and_refund_records_nothing(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """After settle every token window holds the real usage; after refund it holds nothing."""
    limiter = await make_limiter(key=(rule(60, tokens=1000), rule(3600, tokens=5000)),
                                 tenant=(rule(86400, tokens=10**6),))
    client = redis_proc.client()
    kept = await limiter.admit(principal(), "kept", 400)
    refunded = await limiter.admit(principal(), "refunded", 300)
    await limiter.settle(kept, 123)
    await limiter.refund(refunded)
    amount_keys = kept.token_keys[1::2]
    assert len(amount_keys) == 3
    for zkey, hkey in zip(kept.token_keys[::2], amount_keys, strict=True):
        assert client.hgetall(hkey) == {b"kept": b"123", b"": b"123"}
        assert client.zrange(zkey, 0, -1) == [b"kept"]
    after = await limiter.admit(principal(), "next", 877)
    assert after.headers["x-ratelimit-remaining-tokens"] == "0"
    await limiter.refund(after)
    await limiter.refund(kept)
    for hkey in amount_keys:
        assert client.hgetall(hkey) == {}


async def test_a_request_larger_than_the_whole_budget_is_refused_for_good(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """An estimate above the budget's limit is token_quota_exceeded at once, without Retry-After."""
    limiter = await make_limiter(key=(rule(60, tokens=500),))
    with pytest.raises(TokenQuotaExceeded) as refused:
        await limiter.admit(principal(), "huge", 501)
    assert refused.value.code == "token_quota_exceeded"
    assert "can never be admitted" in refused.value.message
    assert "Retry-After" not in refused.value.headers
    assert redis_proc.client().dbsize() == 0


async def test_a_token_request_that_still_fits_is_admitted_and_one_that_does_not_waits(
        make_limiter: LimiterFactory) -> None:
    """With 100 of 1000 tokens left, 100 is admitted and 1 more is refused with a retry time."""
    limiter = await make_limiter(key=(rule(60, tokens=1000),))
    await limiter.admit(principal(), "a", 900)
    fits = await limiter.admit(principal(), "b", 100)
    assert fits.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(TokenQuotaExceeded) as refused:
        await limiter.admit(principal(), "c", 1)
    assert 59 <= int(refused.value.headers["Retry-After"]) <= 60


async def test_shadow_rules_count_would_be_refusals_but_never_refuse(make_limiter: LimiterFactory) -> None:
    """A shadow limit of 2 lets all 5 requests through and reports 3 would-be refusals."""
    limiter = await make_limiter(key=(rule(60, requests=2, mode="shadow"),), tenant=(rule(60, requests=100),))
    admissions = [await limiter.admit(principal(), f"r{i}") for i in range(5)]
    assert [a.shadow_refused for a in admissions] == [(), (), ("key:requests:60s",)] + [
        ("key:requests:60s",)] * 2
    assert limiter.shadow_refusals == 3
    assert admissions[-1].headers["x-ratelimit-remaining-requests"] == "95"


async def test_every_limiter_key_has_a_ttl_of_its_window_plus_slack(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """No limiter key lives forever: TTL is at most window + 1 s."""
    limiter = await make_limiter(key=(rule(60, requests=5, tokens=100),), tenant=(rule(3600, tokens=10**4),))
    await limiter.admit(principal(), "r", 10)
    client = redis_proc.client()
    windows = {key: int(key.removesuffix(b":amt").rsplit(b":", 1)[1]) for key in client.scan_iter()}
    assert len(windows) == 5
    for key, window_s in windows.items():
        assert 0 < client.pttl(key) <= window_s * 1000 + 1000


async def test_one_admission_is_one_redis_command(make_limiter: LimiterFactory,
                                                  redis_proc: RedisProcess) -> None:
    """Each admit, with four windows to check, is one EVALSHA: MONITOR sees nothing else from clients."""
    limiter = await make_limiter(key=(rule(60, requests=100, tokens=10**6),),
                                 tenant=(rule(3600, requests=1000, tokens=10**7),))
    # Warm up: load the script and open the pool's connections (their handshakes are not admissions).
    await asyncio.gather(*(limiter.admit(principal(), f"w{i}", 10) for i in range(50)))
    sync = redis_proc.client()
    sync.ping()  # its handshake happens before MONITOR starts
    watcher = aioredis.Redis(port=redis_proc.port)
    seen: list[str] = []
    async with watcher.monitor() as monitor:
        before = command_calls(sync)

        async def collect() -> None:
            async for command in monitor.listen():
                if command.get("client_type") == "lua":
                    continue
                if "end-of-test" in command["command"]:
                    return
                seen.append(command["command"].split()[0].upper())

        collector = asyncio.create_task(collect())
        await asyncio.gather(*(limiter.admit(principal(), f"r{i}", 10) for i in range(50)))
        after = command_calls(sync)
        sync.echo("end-of-test")
        await asyncio.wait_for(collector, 10)
    await watcher.aclose()
    assert after["evalsha"] - before["evalsha"] == 50
    assert [c for c in seen if c not in ("INFO", "ECHO")] == ["EVALSHA"] * 50


async def test_without_applicable_rules_admission_makes_no_store_call(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """A principal with no limits is admitted without touching Redis."""
    limiter = await make_limiter()
    client = redis_proc.client()
    before = command_calls(client)
    admission = await limiter.admit(principal(), "r", 500)
    await limiter.settle(admission, 10)
    after = command_calls(client)
    assert {k: v for k, v in after.items() if k != "info"} == {
        k: v for k, v in before.items() if k != "info"}
    assert admission.headers == {} and admission.reserved_tokens == 0


async def test_sliding_window_never_admits_more_than_the_limit_in_any_window(
        make_limiter: LimiterFactory) -> None:
    """Bursts spread across window boundaries never put more than 5 admissions in any 2 s of Redis time."""
    limiter = await make_limiter(key=(rule(2, requests=5),))
    rng = random.Random(7)
    times: list[int] = []

    async def client(n: int) -> None:
        for i in range(40):
            try:
                admission = await limiter.admit(principal(), f"c{n}-{i}")
                times.append(admission.redis_time_ms)
            except RateLimitExceeded:
                pass
            await asyncio.sleep(rng.uniform(0.0, 0.2))  # paces the offered load across ~4 s

    await asyncio.gather(*(client(n) for n in range(4)))
    times.sort()
    assert len(times) >= 10  # the limit was reached in more than one window
    assert all(later - earlier >= 2000 for earlier, later in zip(times, times[5:], strict=False))
    assert times[-1] - times[0] >= 2000


async def test_admitting_the_same_request_id_twice_charges_once(make_limiter: LimiterFactory,
                                                                redis_proc: RedisProcess) -> None:
    """A retried admission (same request id) does not double the tokens recorded."""
    limiter = await make_limiter(key=(rule(60, tokens=1000),))
    first: Limiter = limiter
    a = await first.admit(principal(), "same", 100)
    await first.admit(principal(), "same", 100)
    assert redis_proc.client().hget(a.token_keys[1], "") == b"100"
