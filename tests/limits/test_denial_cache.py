"""RL-7: a key hammering past its request limit costs no store call until its window frees a slot,
and what is admitted stays exact (real redis-server)."""

from __future__ import annotations

import pytest

from sidecar.errors import RateLimitExceeded, TokenQuotaExceeded
from sidecar.limits import Limiter
from sidecar.metrics import Metrics
from sidecar.settings import LimitsSettings
from tests.conftest import RedisProcess
from tests.limits.conftest import LimiterFactory, open_store, principal, rule
from tests.limits.test_admit import command_calls


class FakeClock:
    """The limiter's monotonic clock, moved by the test (Redis keeps its own real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_key_at_twenty_times_its_limit_stops_reaching_redis(
        make_limiter: LimiterFactory, redis_proc: RedisProcess) -> None:
    """20 x a limit of 5: exactly 5 admitted, and the 95 refusals cost one store call in all."""
    limiter = await make_limiter(key=(rule(60, requests=5),))
    who = principal()
    client = redis_proc.client()
    before = command_calls(client).get("evalsha", 0)
    admitted, refusals = 0, []
    for i in range(100):
        try:
            await limiter.admit(who, f"r{i}")
            admitted += 1
        except RateLimitExceeded as exc:
            refusals.append(exc)
    calls = command_calls(client)["evalsha"] - before
    assert admitted == 5
    assert calls == 6  # 5 admissions + the first refusal; the other 94 never left the process
    assert limiter.local_refusals == 94
    first, last = refusals[0].headers, refusals[-1].headers
    assert last["x-ratelimit-remaining-requests"] == "0"
    assert last["x-ratelimit-limit-requests"] == "5"
    assert 1 <= int(last["Retry-After"]) <= int(first["Retry-After"]) <= 60
    assert int(last["retry-after-ms"]) <= int(first["retry-after-ms"])


async def test_the_remembered_refusal_ends_when_the_window_frees_a_slot(
        redis_url: str, redis_proc: RedisProcess) -> None:
    """Once the refusal's retry time has passed on the limiter's clock, the store decides again."""
    clock = FakeClock()
    store = await open_store(redis_url)
    try:
        limiter = Limiter(store, LimitsSettings(key=(rule(60, requests=1),)), Metrics(), clock=clock)
        who = principal()
        await limiter.admit(who, "r0")
        with pytest.raises(RateLimitExceeded) as refused:
            await limiter.admit(who, "r1")
        retry_s = int(refused.value.headers["retry-after-ms"]) / 1000
        client = redis_proc.client()
        before = command_calls(client)["evalsha"]
        clock.now += retry_s - 0.01
        with pytest.raises(RateLimitExceeded):
            await limiter.admit(who, "r2")
        assert command_calls(client)["evalsha"] == before  # still remembered
        clock.now += 0.02
        with pytest.raises(RateLimitExceeded):  # Redis (real time) still refuses ...
            await limiter.admit(who, "r3")
        assert command_calls(client)["evalsha"] == before + 1  # ... but it was asked again
    finally:
        await store.close()


async def test_token_refusals_are_not_remembered(make_limiter: LimiterFactory) -> None:
    """A token refusal depends on the request's size: a smaller request right after still fits."""
    limiter = await make_limiter(key=(rule(60, tokens=100),))
    who = principal()
    await limiter.admit(who, "big", 90)
    with pytest.raises(TokenQuotaExceeded):
        await limiter.admit(who, "too-big", 50)
    assert (await limiter.admit(who, "small", 10)).headers["x-ratelimit-remaining-tokens"] == "0"


async def test_a_refusal_of_one_key_does_not_refuse_another(make_limiter: LimiterFactory) -> None:
    """The remembered refusal belongs to the principal whose window is full."""
    limiter = await make_limiter(key=(rule(60, requests=1),))
    await limiter.admit(principal("k1"), "a")
    with pytest.raises(RateLimitExceeded):
        await limiter.admit(principal("k1"), "b")
    assert (await limiter.admit(principal("k2"), "c")).redis_time_ms > 0
