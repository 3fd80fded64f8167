"""Policies: throttle and block last for the cool-down and then end; shadow mode never acts;
the daily cap; store failures follow `on_store_error`; every key has a TTL and the tenant tag.

The cool-down tests wait the cool-down out (1-1.5 s): its end is the behaviour under test.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import redis

from sidecar.abuse import AbuseService, AbuseVerdict, enforce
from sidecar.errors import AbuseDetected, RateLimitExceeded, StoreUnavailable
from sidecar.guards.fingerprint import fingerprint
from sidecar.model import Principal
from tests.abuse.conftest import ServiceFactory, suspects
from tests.abuse.workloads import extraction_prompts
from tests.conftest import free_port

P = Principal("scraper", "acme", frozenset({"chat"}))


async def scrape_until(service: AbuseService, action: str, prompts: list[str]) -> AbuseVerdict:
    """Send template prompts until the verdict's action is `action`; fail after all were sent."""
    for text in prompts:
        verdict = await service.check(P, fingerprint(text))
        if verdict.action == action:
            return verdict
    raise AssertionError(f"never reached {action}")


async def wait_until_allowed(service: AbuseService, text: str, limit_s: float) -> float:
    """Seconds until five requests in a row of the key are allowed (polling every 50 ms)."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        verdicts = [await service.check(P, fingerprint(text)) for _ in range(5)]
        if all(v.action == "allow" for v in verdicts):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError("still refused after the limit")


async def test_block_lasts_the_cooldown_then_ends(make_service: ServiceFactory) -> None:
    """A blocked key is refused for the cool-down, then allowed again and judged afresh."""
    service = await make_service(template_policy="block", cooldown_s=1.0)
    prompts = extraction_prompts(3000)
    verdict = await scrape_until(service, "block", prompts)
    blocked_at = time.monotonic()
    assert verdict.signals == ("key:template",) and verdict.retry_after_s == 1
    again = await service.check(P, fingerprint("What is the capital of Peru?"))
    assert again.action == "block"
    waited = await wait_until_allowed(service, "Hello there", 5.0)
    assert time.monotonic() - blocked_at >= 0.9
    assert waited < 3.0
    # It starts over: the next few dozen template prompts pass until the signal trips again.
    fresh = [await service.check(P, fingerprint(t)) for t in prompts[:20]]
    assert all(v.action == "allow" for v in fresh)


async def test_throttle_admits_its_rate_then_ends(make_service: ServiceFactory) -> None:
    """A throttled key gets only a few requests a minute during the cool-down, then all again."""
    service = await make_service(template_policy="throttle", cooldown_s=1.5, throttle_per_minute=3)
    prompts = extraction_prompts(3000)
    first_signal = None
    for text in prompts:
        verdict = await service.check(P, fingerprint(text))
        if verdict.signals:
            first_signal = verdict
            break
    assert first_signal is not None and first_signal.action == "allow"  # starts the throttle
    throttled_at = time.monotonic()
    after = [await service.check(P, fingerprint(t)) for t in prompts[:10]]
    allowed = sum(v.action == "allow" for v in after)
    assert 2 <= allowed <= 5  # 3 a minute, the first used by the request that started it
    refused = [v for v in after if v.action == "throttle"]
    assert refused and all(1 <= v.retry_after_s <= 2 for v in refused)
    await wait_until_allowed(service, "Hello there", 5.0)
    assert time.monotonic() - throttled_at >= 1.0
    again = [await service.check(P, fingerprint(t)) for t in prompts[:10]]
    assert all(v.action == "allow" for v in again)


async def test_shadow_mode_counts_but_never_blocks(make_service: ServiceFactory) -> None:
    """In shadow mode a scraper is counted and logged as blocked, yet every request is allowed."""
    service = await make_service(mode="shadow", template_policy="block", cooldown_s=60)
    verdicts = [await service.check(P, fingerprint(t)) for t in extraction_prompts(600)]
    assert all(v.action == "allow" for v in verdicts)
    assert any(v.shadow_action == "block" and v.signals for v in verdicts)
    assert suspects(service, "key:template") == 1


async def test_daily_cap_blocks_until_the_day_ends(make_service: ServiceFactory) -> None:
    """Past the daily cap a key is blocked until the end of the UTC day, not just the cool-down."""
    service = await make_service(key_daily_requests=5, daily_policy="block", cooldown_s=1)
    verdicts = [await service.check(P, fingerprint(f"hello {i}")) for i in range(6)]
    assert [v.action for v in verdicts] == ["allow"] * 4 + ["block", "block"]
    seconds_left_today = 86400 - int(time.time()) % 86400
    assert verdicts[4].retry_after_s == pytest.approx(seconds_left_today, abs=5)


async def test_off_policy_never_trips(make_service: ServiceFactory) -> None:
    """A signal whose policy is off is never reported, however far over its threshold."""
    service = await make_service(volume_policy="off", key_requests=3)
    verdicts = [await service.check(P, fingerprint("same")) for _ in range(10)]
    assert all(v.signals == () for v in verdicts)


def test_enforce_maps_actions_to_errors() -> None:
    """Block answers 403 abuse_detected, throttle 429, both with Retry-After; allow raises nothing."""
    enforce(AbuseVerdict("allow"))
    with pytest.raises(AbuseDetected) as blocked:
        enforce(AbuseVerdict("block", ("key:template",), 1.2, 30))
    assert (blocked.value.status, blocked.value.headers) == (403, {"Retry-After": "30"})
    with pytest.raises(RateLimitExceeded) as slowed:
        enforce(AbuseVerdict("throttle", ("key:volume",), 1.0, 7))
    assert (slowed.value.status, slowed.value.headers["Retry-After"]) == (429, "7")


async def test_every_key_has_a_ttl_and_the_tenant_tag(make_service: ServiceFactory,
                                                      redis_url: str) -> None:
    """All state the checks leave in Redis expires and sits under the tenant's hash tag."""
    service = await make_service(template_policy="throttle")
    for text in extraction_prompts(300):
        await service.check(P, fingerprint(text, 3))
    await service.record_output(P, 500)
    client = redis.Redis.from_url(redis_url)
    keys: list[bytes] = client.keys("*")  # type: ignore[assignment]
    kinds = {re.sub(rb":\d+$", b":N", k) for k in keys}  # the bucket, day or minute as N
    assert kinds == {b"abuse:{t:acme}:k:scraper:" + part for part in (b"s", b"h:N", b"day:N",
                                                                       b"thr:N")} | \
        {b"abuse:{t:acme}:tenant:" + part for part in (b"s", b"h:N", b"day:N")}
    assert all(client.pttl(k) > 0 for k in keys)


async def test_store_down_allows_and_counts(make_service: ServiceFactory) -> None:
    """With the store unreachable the check lets requests through and counts each one."""
    service = await make_service(store_url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1)
    verdicts = [await service.check(P, fingerprint("hi")) for _ in range(3)]
    assert all(v.action == "allow" and v.degraded for v in verdicts)
    registry = service.metrics.registry
    assert registry.get_sample_value("sidecar_degraded_requests_total", {"feature": "abuse"}) == 3
    assert registry.get_sample_value("sidecar_store_errors_total", {"op": "abuse_check"}) == 1


async def test_store_down_denies_when_configured(make_service: ServiceFactory) -> None:
    """With on_store_error = deny an unreachable store answers 503."""
    service = await make_service(store_url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1,
                                 on_store_error="deny")
    with pytest.raises(StoreUnavailable):
        await service.check(P, fingerprint("hi"))


async def test_disabled_service_touches_nothing(make_service: ServiceFactory,
                                                redis_url: str) -> None:
    """With abuse detection off no request is recorded or judged."""
    service = await make_service(enabled=False)
    assert await service.check(P, fingerprint("hi")) == AbuseVerdict()
    await service.record_output(P, 100)
    assert redis.Redis.from_url(redis_url).keys("*") == []


TENANT_OFF = {f"tenant_{name}": 0 for name in ("requests", "distinct", "template", "embedding_inputs",
                                                "output_tokens", "daily_requests")}


async def test_tenant_off_tracks_only_the_key(make_service: ServiceFactory, redis_url: str) -> None:
    """With every tenant threshold off only the key's state is kept, and key signals still trip."""
    service = await make_service(key_output_tokens=1000, **TENANT_OFF)
    await service.check(P, fingerprint("first"))
    await service.record_output(P, 1500)
    assert (await service.check(P, fingerprint("second"))).signals == ("key:output",)
    keys: list[bytes] = redis.Redis.from_url(redis_url).keys("*")  # type: ignore[assignment]
    assert keys and all(k.startswith(b"abuse:{t:acme}:k:scraper:") for k in keys)
