"""Exactness under concurrency: 4 OS processes against one Redis (single node and 3-master Cluster)."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis

from sidecar.errors import TokenQuotaExceeded
from sidecar.limits import Limiter
from sidecar.metrics import Metrics
from sidecar.model import Principal
from sidecar.settings import LimitsSettings
from tests.cluster import RedisClusterNodes
from tests.conftest import RedisProcess
from tests.limits.conftest import open_store, rule
from tests.limits.workers import admit_from_processes

PROCESSES, PER_PROCESS = 4, 100


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
def target(request: pytest.FixtureRequest) -> tuple[str, redis.Redis | redis.RedisCluster]:
    """A flushed store URL and a sync client on it: single redis-server or a 3-master cluster."""
    if request.param == "redis":
        server: RedisProcess = request.getfixturevalue("redis_proc")
        server.client().flushall()
        return server.url, server.client()
    nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster")
    nodes.flush()
    return nodes.url, nodes.cluster_client()


def test_400_concurrent_admissions_from_4_processes_admit_exactly_100(
        target: tuple[str, redis.Redis]) -> None:
    """With 100 requests/min and 400 offered at once from 4 processes, exactly 100 get through."""
    url, client = target
    jobs = [[(f"p{p}-r{i}", 0) for i in range(PER_PROCESS)] for p in range(PROCESSES)]
    outcomes = admit_from_processes(url, jobs, key=(rule(60, requests=100),))
    codes = [code for _, _, code, _ in outcomes]
    assert codes.count("ok") == 100
    assert codes.count("rate_limit_exceeded") == 300
    assert client.zcard("rl:{t:tenant-1}:k:key-1:60") == 100


def test_token_budget_is_never_overspent_and_a_request_that_fits_is_admitted(
        target: tuple[str, redis.Redis]) -> None:
    """Mixed-size reservations from 4 processes never exceed 1000 tokens; the exact remainder still fits."""
    url, client = target
    rng = random.Random(11)
    jobs = [[(f"p{p}-r{i}", rng.randint(5, 40)) for i in range(PER_PROCESS)] for p in range(PROCESSES)]
    outcomes = admit_from_processes(url, jobs, key=(rule(60, tokens=1000),))
    admitted = sum(tokens for _, tokens, code, _ in outcomes if code == "ok")
    refused = [tokens for _, tokens, code, _ in outcomes if code == "token_quota_exceeded"]
    assert admitted <= 1000
    assert admitted >= 1000 - 40  # refusals only once the budget was (nearly) spent
    assert len(refused) + sum(code == "ok" for _, _, code, _ in outcomes) == PROCESSES * PER_PROCESS
    assert int(client.hget("tq:{t:tenant-1}:k:key-1:60:amt", "")) == admitted

    async def top_up() -> None:
        store = await open_store(url)
        limiter = Limiter(store, LimitsSettings(key=(rule(60, tokens=1000),)), Metrics())
        who = Principal("key-1", "tenant-1", frozenset())
        try:
            if admitted < 1000:
                fits = await limiter.admit(who, "exact-fit", 1000 - admitted)
                assert fits.headers["x-ratelimit-remaining-tokens"] == "0"
            with pytest.raises(TokenQuotaExceeded):
                await limiter.admit(who, "one-more", 1)
        finally:
            await store.close()

    asyncio.run(top_up())
