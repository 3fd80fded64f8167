"""A Redis Cluster failover under load: admissions keep their exactness (at most 2 % over the
limit) and errors, if any, stop within 5 s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from sidecar.errors import SidecarError
from sidecar.limits.limiter import Limiter
from sidecar.metrics import Metrics
from sidecar.model import LimitRule, Principal
from sidecar.settings import LimitsSettings, StoreSettings
from sidecar.store.redis import connect
from tests.cluster import RedisClusterNodes

pytestmark = pytest.mark.faults
LIMIT = 300
PRINCIPAL = Principal(key_id="failover-key", tenant="failover", scopes=frozenset({"chat"}))


@pytest.fixture(scope="module")
def cluster_with_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster-replicas"), masters=3, replicas=1)
    nodes.start()
    yield nodes
    nodes.stop()


def replica_of_slot(nodes: RedisClusterNodes, key: str) -> tuple[int, int]:
    """(master port, replica port) serving `key`'s slot, once gossip has announced the replica."""
    client = nodes.client(nodes.ports[0])
    slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
    deadline = time.monotonic() + 15
    while True:
        for start, end, master, *replicas in client.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end) and replicas:
                return int(master[1]), int(replicas[0][1])
        assert time.monotonic() < deadline, "no replica announced for the slot"
        time.sleep(0.1)


async def test_failover_under_load_keeps_the_limit(cluster_with_replicas: RedisClusterNodes) -> None:
    """CLUSTER FAILOVER of the master holding a key's windows, while admitting: admitted stays
    within 2 % of the limit, and the limiter is back on the store within 5 s."""
    nodes = cluster_with_replicas
    store = await connect(StoreSettings(url=nodes.url, timeout_s=1.0))
    limiter = Limiter(store, LimitsSettings(key=(LimitRule(60, requests=LIMIT),)), Metrics())
    master, replica = replica_of_slot(nodes, "rl:{t:failover}:x")
    outcomes: list[tuple[float, str]] = []

    async def one(i: int) -> None:
        try:
            await limiter.admit(PRINCIPAL, f"req-{i}")
            outcomes.append((time.monotonic(), "ok"))
        except SidecarError as exc:
            outcomes.append((time.monotonic(), exc.code))

    try:
        for batch in range(30):
            if batch == 5:
                nodes.client(replica).execute_command("CLUSTER", "FAILOVER")
                failed_over_at = time.monotonic()
            await asyncio.gather(*(one(batch * 20 + i) for i in range(20)))
        deadline = time.monotonic() + 10
        while nodes.client(replica).info("replication").get("role") != "master":
            assert time.monotonic() < deadline, "failover did not complete"
            await asyncio.sleep(0.05)
    finally:
        await store.close()
    admitted = sum(1 for _, o in outcomes if o == "ok")
    errors = [t for t, o in outcomes if o not in ("ok", "rate_limit_exceeded")]
    print(f"admitted {admitted} of {len(outcomes)} (limit {LIMIT}); errors {len(errors)}; "
          f"master {master} -> {replica}")
    assert admitted <= LIMIT * 1.02
    # Requests that failed during the failover may still have been recorded (over-counting, never
    # over-admitting), so only the two together must fill the limit.
    assert admitted + len(errors) >= LIMIT
    assert all(t - failed_over_at < 5.0 for t in errors)
