"""Store failure under load: stopped and frozen Redis, both policies, recovery, SCRIPT FLUSH."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.errors import RateLimitExceeded, SidecarError, StoreUnavailable
from sidecar.limits import Limiter
from sidecar.metrics import Metrics
from sidecar.settings import LimitsSettings
from tests.conftest import RedisProcess
from tests.limits.conftest import open_store, principal, rule

TIMEOUT_S = 0.1
pytestmark = pytest.mark.faults


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test's own, which it may stop, freeze and restart."""
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


async def _limiter(url: str, policy: str, metrics: Metrics) -> Limiter:
    store = await open_store(url, TIMEOUT_S)
    settings = LimitsSettings(key=(rule(60, requests=100),), on_store_error=policy,  # type: ignore[arg-type]
                              fallback_share=0.1)
    return Limiter(store, settings, metrics)


async def _load(limiter: Limiter, n: int, tag: str) -> tuple[list[str], float]:
    """n concurrent admissions: their outcomes and the slowest one's latency (s)."""
    slowest = 0.0

    async def one(i: int) -> str:
        nonlocal slowest
        started = time.perf_counter()
        try:
            admission = await limiter.admit(principal(), f"{tag}-{i}")
            outcome = "degraded" if admission.degraded else "ok"
        except SidecarError as exc:
            outcome = exc.code
        slowest = max(slowest, time.perf_counter() - started)
        return outcome

    outcomes = list(await asyncio.gather(*(one(i) for i in range(n))))
    return outcomes, slowest


async def _until_store_used(limiter: Limiter, deadline_s: float) -> float:
    """Poll with admissions until one goes through the store again; seconds it took."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < deadline_s:
        try:
            # Another key: admissions sent before a freeze still run when Redis resumes, so
            # the loaded key may be full (counted, never over-admitted).
            if not (await limiter.admit(principal("probe-key"), f"probe-{time.monotonic_ns()}")).degraded:
                return time.monotonic() - started
        except (StoreUnavailable, RateLimitExceeded) as exc:
            last = repr(exc.__context__)
        await asyncio.sleep(0.05)
    raise AssertionError(f"the limiter did not use the store again ({last})")


def break_store(server: RedisProcess, fault: str) -> None:
    """Take Redis away: `stop` shuts it down, `freeze` SIGSTOPs it (connections hang)."""
    assert server.proc is not None
    if fault == "stop":
        server.stop()
    else:
        server.proc.send_signal(signal.SIGSTOP)


def heal_store(server: RedisProcess, fault: str) -> None:
    """Undo `break_store`."""
    if fault == "stop":
        server.start()
    else:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("fault", ["stop", "freeze"])
async def test_allow_policy_admits_within_the_fallback_share_and_recovers(
        own_redis: RedisProcess, fault: str) -> None:
    """Redis down with `allow`: 10 of 100/min admitted locally, fast, counted; the store is used again."""
    metrics = Metrics()
    limiter = await _limiter(own_redis.url, "allow", metrics)
    await limiter.admit(principal(), "before")
    break_store(own_redis, fault)
    outcomes, slowest = [], 0.0
    for round_ in range(5):
        more, worst = await _load(limiter, 40, f"down{round_}")
        outcomes += more
        slowest = max(slowest, worst)
    print(f"\n{fault}/allow: slowest admit during outage {slowest * 1000:.1f} ms")
    assert outcomes.count("degraded") == 10
    assert outcomes.count("rate_limit_exceeded") == 190
    assert slowest < TIMEOUT_S + 1.0
    assert metrics.degraded_requests.labels("limits")._value.get() == 10
    assert metrics.degraded._value.get() == 1
    heal_store(own_redis, fault)
    took = await _until_store_used(limiter, 5.0)
    print(f"{fault}/allow: store used again after {took:.2f} s")
    assert metrics.degraded._value.get() == 0
    await limiter.store.close()


@pytest.mark.parametrize("fault", ["stop", "freeze"])
async def test_deny_policy_answers_store_unavailable_quickly_and_recovers(
        own_redis: RedisProcess, fault: str) -> None:
    """Redis down with `deny`: every admission is a fast 503 with Retry-After: 1; limits apply again after."""
    metrics = Metrics()
    limiter = await _limiter(own_redis.url, "deny", metrics)
    await limiter.admit(principal(), "before")
    break_store(own_redis, fault)
    outcomes, slowest = await _load(limiter, 100, "down")
    print(f"\n{fault}/deny: slowest admit during outage {slowest * 1000:.1f} ms")
    assert outcomes == ["store_unavailable"] * 100
    assert slowest < TIMEOUT_S + 1.0
    with pytest.raises(StoreUnavailable) as refused:
        await limiter.admit(principal(), "again")
    assert refused.value.headers == {"Retry-After": "1"}
    heal_store(own_redis, fault)
    await _until_store_used(limiter, 5.0)
    await limiter.store.close()


async def test_script_flush_under_load_fails_no_admission(own_redis: RedisProcess) -> None:
    """SCRIPT FLUSH every 100 ms while admitting: every admission gets a decision, none a store error."""
    limiter = await _limiter(own_redis.url, "deny", Metrics())
    # This test is about NOSCRIPT recovery, not latency: a generous deadline keeps a busy CI
    # machine's scheduling delays from counting as store errors.
    limiter.store.timeout_s = 2.0
    limiter.settings = LimitsSettings(key=(rule(60, requests=10**6),))
    limiter._plans.clear()
    stop = asyncio.Event()
    flushes = 0

    async def flusher() -> None:
        nonlocal flushes
        client = own_redis.client()
        while not stop.is_set():
            await asyncio.to_thread(client.script_flush)
            flushes += 1
            await asyncio.sleep(0.1)

    task = asyncio.create_task(flusher())
    outcomes: list[str] = []
    try:
        round_ = 0
        while flushes < 5:
            more, _ = await _load(limiter, 50, f"r{round_}")
            outcomes += more
            round_ += 1
    finally:
        stop.set()
        await task
    assert outcomes.count("ok") == len(outcomes) == 50 * round_, sorted(set(outcomes))[:5]
    await limiter.store.close()
