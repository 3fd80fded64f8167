"""The window the abuse script judges is exactly the sum of its buckets, as buckets leave it,
and what leaves is deleted; a check costs a fixed handful of Redis commands.

The window tests use 1-second buckets and wait for Redis time to move on: expiry is the
behaviour under test.
"""

from __future__ import annotations

import asyncio

import redis

from sidecar.abuse import AbuseService, key_prefix
from sidecar.guards.fingerprint import Features
from sidecar.metrics import Metrics
from sidecar.model import Principal
from sidecar.settings import AbuseSettings, StoreSettings
from sidecar.store.redis import connect
from tests.abuse.conftest import ServiceFactory
from tests.cluster import RedisClusterNodes

OFF = {name: 0 for name in (
    "key_requests", "key_distinct", "key_template", "key_embedding_inputs", "key_output_tokens",
    "key_daily_requests", "tenant_requests", "tenant_distinct", "tenant_template",
    "tenant_embedding_inputs", "tenant_output_tokens", "tenant_daily_requests")}
# Requests per 1-second bucket: two buckets of window, one empty bucket, uneven counts.
PHASES = (3, 1, 4, 0, 2, 5)


def redis_bucket(client: redis.Redis) -> int:
    seconds, _ = client.time()
    return int(seconds)


async def next_bucket(client: redis.Redis) -> int:
    """Wait until the next 1-second bucket of Redis time starts; return it."""
    seconds, micros = client.time()
    await asyncio.sleep((1_000_000 - int(micros)) / 1e6 + 0.005)
    assert redis_bucket(client) == int(seconds) + 1
    return int(seconds) + 1


def new_hashes(client: redis.Redis, count: int) -> list[str]:
    """Prompt hashes that each change a HyperLogLog holding the ones before (so every one is a
    new prompt to its bucket, as a template signal counts them)."""
    out: list[str] = []
    i = 0
    while len(out) < count:
        candidate = f"{i:016x}"
        if client.pfadd("scratch-hll", candidate):
            out.append(candidate)
        i += 1
    client.delete("scratch-hll")
    return out


async def run_phases(client: redis.Redis,
                     judged: list[tuple[AbuseService, Principal]]) -> list[tuple[int, int]]:
    """Send PHASES to every (service, principal); per request and service: (score as a count,
    the truth: requests of the buckets still in the window). Each prompt is new and carries the
    similarity id "same" and one id of its phase."""
    hashes = iter(new_hashes(client, len(judged) * sum(PHASES)))
    sent: list[int] = []  # bucket of every request
    seen: list[tuple[int, int]] = []
    for phase, count in enumerate(PHASES):
        bucket = await next_bucket(client)
        for _ in range(count):
            sent.append(bucket)
            truth = sum(1 for b in sent if b > bucket - 2)  # 2 buckets of window
            for service, who in judged:
                features = Features(next(hashes), ("same", f"p{phase}"), 0)
                verdict = await service.check(who, features)
                seen.append((round(verdict.score * 1000), truth))
            assert redis_bucket(client) == bucket  # the phase stayed in its bucket
    return seen


async def test_window_values_equal_the_buckets_still_in_it_and_the_rest_is_deleted(
        make_service: ServiceFactory, redis_url: str) -> None:
    """Volume and template, judged across six buckets of a two-bucket window (one of them
    empty), always equal the requests of the buckets still in the window; afterwards the key's
    hash holds only the window's buckets and the similarity ids of prompts still in it."""
    client = redis.Redis.from_url(redis_url)
    volume = await make_service(window_s=2, bucket_s=1, **{**OFF, "key_requests": 1000})
    template = await make_service(window_s=2, bucket_s=1, **{**OFF, "key_template": 1000})
    by_template = Principal("t", "acme", frozenset())
    seen = await run_phases(client, [(volume, Principal("v", "acme", frozenset())),
                                     (template, by_template)])
    assert [score for score, _ in seen] == [truth for _, truth in seen]
    now = redis_bucket(client)
    fields = {k.decode() for k in client.hkeys(key_prefix(by_template) + "s")}  # type: ignore[union-attr]
    buckets = {int(f[1:]) for f in fields if f[0] in "nde" and f[1:].isdigit()}
    assert buckets and all(b > now - 2 for b in buckets)
    # Phase 3 sent nothing: the ids of the last two phases are the ones still in the window.
    assert {f for f in fields if f.startswith("i")} == {"isame", "ip4", "ip5"}


async def test_output_tokens_leave_the_window_with_their_bucket(
        make_service: ServiceFactory, redis_url: str) -> None:
    """Output tokens recorded after a response count while their bucket is in the window."""
    client = redis.Redis.from_url(redis_url)
    service = await make_service(window_s=2, bucket_s=1,
                                 **{**OFF, "key_output_tokens": 1_000_000})
    who = Principal("o", "acme", frozenset())
    hashes = new_hashes(client, 4)
    await next_bucket(client)
    await service.check(who, Features(hashes[0], (), 0))
    await service.record_output(who, 300_000)
    assert (await service.check(who, Features(hashes[1], (), 0))).score == 0.3
    await next_bucket(client)
    await service.record_output(who, 200_000)
    assert (await service.check(who, Features(hashes[2], (), 0))).score == 0.5
    await next_bucket(client)
    assert (await service.check(who, Features(hashes[3], (), 0))).score == 0.2


def command_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


async def test_a_check_costs_ten_redis_commands_with_the_tenant_tracked(
        make_service: ServiceFactory, redis_url: str) -> None:
    """One check of a key and its tenant, every signal on, is EVALSHA, TIME and four commands per
    entity (HMGET, PFADD, INCR, HSET), plus the few of a bucket's first request."""
    client = redis.Redis.from_url(redis_url)
    service = await make_service()
    who = Principal("k", "acme", frozenset())
    hashes = new_hashes(client, 201)
    await service.check(who, Features(hashes[0], ("a1", "b2", "c3", "d4"), 0))
    before = command_calls(client)
    for h in hashes[1:]:
        await service.check(who, Features(h, ("a1", "b2", "c3", "d4"), 0))
    per_check = (command_calls(client) - before) / 200
    assert per_check <= 10.1, per_check


async def test_the_check_runs_on_a_redis_cluster_in_the_tenants_slot(
        redis_cluster: RedisClusterNodes) -> None:
    """On a 3-master Cluster the check records and judges (every key it touches, named in the
    script or not, is in the tenant's slot) and output tokens reach the same hash."""
    redis_cluster.flush()
    store = await connect(StoreSettings(url=redis_cluster.url, timeout_s=2.0))
    try:
        service = AbuseService(store, AbuseSettings(key_requests=3, key_output_tokens=1000),
                               Metrics())
        who = Principal("k", "acme", frozenset())
        seen = [(await service.check(who, Features(f"{i:016x}", ("a1",), 0))).signals
                for i in range(3)]
        assert seen == [(), (), ("key:volume",)]
        await service.record_output(who, 2000)
        assert "key:output" in (await service.check(who, Features("f" * 16, ("a1",), 0))).signals
    finally:
        await store.close()
    client = redis_cluster.cluster_client()
    assert client.exists(key_prefix(who) + "s", "abuse:{t:acme}:tenant:s") == 2
