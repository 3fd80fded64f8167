"""Admission and the abuse check (and settlement and the output record) sent in one turn for one
tenant leave as one script call, with the replies each would give alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from sidecar.abuse import AbuseService, key_prefix
from sidecar.guards.fingerprint import fingerprint
from sidecar.limits import Limiter
from sidecar.metrics import Metrics
from sidecar.model import LimitRule, Principal
from sidecar.settings import AbuseSettings, LimitsSettings, StoreSettings
from sidecar.store.redis import Store, connect
from tests.conftest import RedisProcess

RULES = (LimitRule(window_s=60, requests=10), LimitRule(window_s=60, tokens=10_000))


def principal(key: str = "k1", tenant: str = "acme") -> Principal:
    return Principal(key, tenant, frozenset({"chat"}), limits=RULES)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    store = await connect(StoreSettings(url=redis_url))
    yield store
    await store.close()


def field_sum(client: redis.Redis, key: str, prefix: bytes) -> int:
    """Sum of a hash's fields whose names start with `prefix`."""
    fields: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
    return sum(int(v) for k, v in fields.items() if k.startswith(prefix))


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


async def admit_and_check(limiter: Limiter, abuse: AbuseService, admitted: Principal,
                          judged: Principal, request_id: str) -> tuple[str, str]:
    """As the proxy does: the abuse check is started, then the admission awaited, in one turn."""
    check = abuse.begin(judged, fingerprint(f"question {request_id}"))
    admission = await limiter.admit(admitted, request_id, 100)
    verdict = await check.verdict()
    return admission.headers["x-ratelimit-remaining-requests"], verdict.action


async def warm_up(limiter: Limiter, abuse: AbuseService) -> None:
    """Load every script: the first call loads the parts, the second the composed script."""
    for i in range(2):
        admission = await limiter.admit(principal(), f"warm{i}", 100)
        await admit_and_check(limiter, abuse, principal(), principal(), f"warm-pair{i}")
        await asyncio.gather(limiter.settle(admission, 1), abuse.record_output(principal(), 1))


async def test_one_tenants_admission_and_abuse_check_are_one_script_call(
        store: Store, redis_proc: RedisProcess) -> None:
    """Two requests of one key: one EVALSHA each, and both the windows and the abuse state
    record them."""
    client = redis_proc.client()
    limiter = Limiter(store, LimitsSettings(), Metrics())
    abuse = AbuseService(store, AbuseSettings(), Metrics())
    await warm_up(limiter, abuse)
    before = evalsha_calls(client)
    assert await admit_and_check(limiter, abuse, principal(), principal(), "r1") == ("5", "allow")
    assert await admit_and_check(limiter, abuse, principal(), principal(), "r2") == ("4", "allow")
    assert evalsha_calls(client) - before == 2
    assert field_sum(client, key_prefix(principal()) + "s", b"n") == 4


async def test_calls_for_two_tenants_are_sent_apart(store: Store, redis_proc: RedisProcess) -> None:
    """Scripts of different tenants (hash tags, Cluster slots) are never composed."""
    client = redis_proc.client()
    limiter = Limiter(store, LimitsSettings(), Metrics())
    abuse = AbuseService(store, AbuseSettings(), Metrics())
    await warm_up(limiter, abuse)
    before = evalsha_calls(client)
    other = principal("k2", "globex")
    assert await admit_and_check(limiter, abuse, principal(), other, "r1") == ("5", "allow")
    assert evalsha_calls(client) - before == 2


async def test_after_script_flush_both_parts_answer_and_compose_again(
        store: Store, redis_proc: RedisProcess) -> None:
    """NOSCRIPT on the composed script: each part runs alone once (nothing charged twice), and
    the next pair is one call again."""
    client = redis_proc.client()
    limiter = Limiter(store, LimitsSettings(), Metrics())
    abuse = AbuseService(store, AbuseSettings(), Metrics())
    await warm_up(limiter, abuse)
    client.script_flush()
    assert await admit_and_check(limiter, abuse, principal(), principal(), "r1") == ("5", "allow")
    before = evalsha_calls(client)
    assert await admit_and_check(limiter, abuse, principal(), principal(), "r2") == ("4", "allow")
    assert evalsha_calls(client) - before == 1
    assert field_sum(client, key_prefix(principal()) + "s", b"n") == 4


async def test_settlement_and_output_record_are_one_script_call(
        store: Store, redis_proc: RedisProcess) -> None:
    """After a response: the token window holds the actual usage and the abuse state the output
    tokens, from one EVALSHA."""
    client = redis_proc.client()
    limiter = Limiter(store, LimitsSettings(), Metrics())
    abuse = AbuseService(store, AbuseSettings(), Metrics())
    await warm_up(limiter, abuse)
    client.delete(key_prefix(principal()) + "s")
    admission = await limiter.admit(principal(), "r1", 500)
    before = evalsha_calls(client)
    await asyncio.gather(limiter.settle(admission, 42),
                         abuse.record_output(principal(), 30, admission.redis_time_ms))
    assert evalsha_calls(client) - before == 1
    amounts = limiter.plan(principal()).token_keys[1]
    assert client.hget(amounts, "r1") == b"42"
    assert field_sum(client, key_prefix(principal()) + "s", b"o") == 30


async def test_bookkeeping_after_a_reply_leaves_with_the_next_admission(
        store: Store, redis_proc: RedisProcess) -> None:
    """Settlement and output record of one request and the next request's admission and abuse
    check leave in one write (two composed calls) and all four are answered."""
    client = redis_proc.client()
    limiter = Limiter(store, LimitsSettings(), Metrics())
    abuse = AbuseService(store, AbuseSettings(), Metrics())
    await warm_up(limiter, abuse)
    admission = await limiter.admit(principal(), "r1", 500)
    assert store.fast is not None
    writes, calls = store.fast.writes, evalsha_calls(client)
    settled = limiter.settle_soon(admission, 42)
    recorded = abuse.record_output_soon(principal(), 30, admission.redis_time_ms)
    assert await admit_and_check(limiter, abuse, principal(), principal(), "r2") == ("4", "allow")
    assert settled is not None and recorded is not None
    await asyncio.wait_for(asyncio.gather(settled, recorded), 1)
    assert (store.fast.writes - writes, evalsha_calls(client) - calls) == (1, 2)
    assert client.hget(limiter.plan(principal()).token_keys[1], "r1") == b"42"


async def test_bookkeeping_with_no_request_after_it_leaves_within_milliseconds(
        store: Store, redis_proc: RedisProcess) -> None:
    """With nothing else to send, a settlement leaves on its own a few ms later."""
    client = redis_proc.client()
    limiter = Limiter(store, LimitsSettings(), Metrics())
    abuse = AbuseService(store, AbuseSettings(), Metrics())
    await warm_up(limiter, abuse)
    admission = await limiter.admit(principal(), "r1", 500)
    settled = limiter.settle_soon(admission, 42)
    assert settled is not None
    await asyncio.wait_for(settled, 0.5)
    assert client.hget(limiter.plan(principal()).token_keys[1], "r1") == b"42"


async def test_bookkeeping_still_waiting_is_sent_when_the_store_closes(
        redis_url: str, redis_proc: RedisProcess) -> None:
    """Closing the store sends what waits for a write first: no settlement is lost at
    shutdown."""
    store = await connect(StoreSettings(url=redis_url))
    limiter = Limiter(store, LimitsSettings(), Metrics())
    admission = await limiter.admit(principal(), "r1", 500)
    settled = limiter.settle_soon(admission, 42)
    await store.close()
    assert settled is not None
    await asyncio.wait_for(asyncio.gather(settled, return_exceptions=True), 1)
    assert redis_proc.client().hget(limiter.plan(principal()).token_keys[1], "r1") == b"42"


async def test_a_failing_part_fails_alone(store: Store, redis_proc: RedisProcess) -> None:
    """When the abuse part of a composed call fails (its hash holds a string), the admission is
    still answered and recorded, and only the abuse check follows its store-failure policy."""
    client = redis_proc.client()
    limiter = Limiter(store, LimitsSettings(), Metrics())
    abuse = AbuseService(store, AbuseSettings(), Metrics())
    await warm_up(limiter, abuse)
    client.set(key_prefix(principal()) + "s", "not a hash")
    before = evalsha_calls(client)
    check = abuse.begin(principal(), fingerprint("question"))
    admission = await limiter.admit(principal(), "r1", 100)
    verdict = await check.verdict()
    assert evalsha_calls(client) - before == 1
    assert admission.headers["x-ratelimit-remaining-requests"] == "5"
    assert verdict.degraded and verdict.action == "allow"
    assert abuse.metrics.registry.get_sample_value("sidecar_store_errors_total",
                                                   {"op": "abuse_check"}) == 1
