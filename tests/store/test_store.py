"""The store: script path health, NOSCRIPT recovery, outage detection, readiness."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from sidecar.settings import StoreSettings
from sidecar.store.redis import Store, StoreError, connect
from tests.conftest import RedisProcess, SidecarFactory
from tests.procs import SidecarProcess


@pytest.fixture
async def store(redis_url: str) -> Store:
    return await connect(StoreSettings(url=redis_url))


async def test_health_runs_the_script_path(store: Store, redis_proc: RedisProcess) -> None:
    """The health check is an EVALSHA, so it sees what a PING would not."""
    assert await store.healthy()  # loads the script if this server has not seen it yet
    before = redis_proc.client().info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    assert await store.healthy()
    after = redis_proc.client().info("commandstats")["cmdstat_evalsha"]["calls"]
    assert after == before + 1
    await store.close()


async def test_script_flush_is_recovered(store: Store, redis_proc: RedisProcess) -> None:
    """After SCRIPT FLUSH the next call reloads the script and succeeds."""
    assert await store.healthy()
    redis_proc.client().script_flush()
    reply = await store.run("health", [], [])
    assert len(reply) == 2
    await store.close()


async def test_a_call_booked_by_callback_survives_script_flush(
        store: Store, redis_proc: RedisProcess) -> None:
    """A write nobody awaits (settlement after the answer) still runs after SCRIPT FLUSH, and its
    outcome reaches the callback once, as success."""
    assert await store.healthy()
    redis_proc.client().script_flush()
    outcomes: list[StoreError | None] = []
    finished = asyncio.get_running_loop().create_future()

    def booked(error: StoreError | None) -> None:
        outcomes.append(error)
        finished.set_result(None)

    store.start("health", [], []).when_done(booked)
    await asyncio.wait_for(finished, 5)
    assert outcomes == [None]
    assert redis_proc.client().script_exists(store.scripts["health"].sha) == [True]
    await store.close()


async def test_memory_store_runs_scripts() -> None:
    """The embedded memory:// store runs the same Lua scripts."""
    store = await connect(StoreSettings(url="memory://"))
    assert await store.healthy()
    await store.close()


async def test_unreachable_store_fails_fast() -> None:
    """A store that is not there raises StoreError instead of hanging."""
    store = await connect(StoreSettings(url="redis://127.0.0.1:1/0", timeout_s=0.2))
    with pytest.raises(StoreError):
        await store.run("health", [], [])
    assert not await store.healthy()
    await store.close()


def store_up(scraped: str) -> float:
    return next(float(line.split()[1]) for line in scraped.splitlines()
                if line.startswith("sidecar_store_up "))


async def test_readyz_stays_ready_and_reports_the_store_degraded(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """By default a Redis outage does not take the sidecar out of its Service: /readyz stays
    200 and says the store is degraded, as does `sidecar_store_up`; both recover with Redis."""
    redis = RedisProcess(tmp_path_factory.mktemp("redis-ready"))
    redis.start()
    sidecar = SidecarProcess({"SIDECAR_STORE_URL": redis.url, "SIDECAR_STORE_TIMEOUT_S": "0.2"})
    try:
        await sidecar.start()
        async with aiohttp.ClientSession() as session:
            redis.stop()
            async with session.get(sidecar.metrics_url + "/readyz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ready", "store": "degraded"}
            async with session.get(sidecar.metrics_url + "/metrics") as response:
                assert store_up(await response.text()) == 0
            redis.start()  # same port as before
            async with session.get(sidecar.metrics_url + "/readyz") as response:
                assert await response.json() == {"status": "ready", "store": "ok"}
            async with session.get(sidecar.metrics_url + "/metrics") as response:
                assert store_up(await response.text()) == 1
    finally:
        redis.stop()
        status, _ = await sidecar.stop()
    assert status == 0


async def test_store_gated_readiness_follows_the_store(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """With `metrics.ready_requires_store`, /readyz is 503 while Redis is down (liveness stays
    200) and 200 again once it is back, without a restart."""
    redis = RedisProcess(tmp_path_factory.mktemp("redis-ready"))
    redis.start()
    sidecar = SidecarProcess({"SIDECAR_STORE_URL": redis.url, "SIDECAR_STORE_TIMEOUT_S": "0.2",
                              "SIDECAR_METRICS_READY_REQUIRES_STORE": "true"})
    try:
        await sidecar.start()
        async with aiohttp.ClientSession() as session:
            redis.stop()
            async with session.get(sidecar.metrics_url + "/readyz") as response:
                assert response.status == 503
                assert await response.json() == {"status": "store_unavailable",
                                                 "store": "degraded"}
            async with session.get(sidecar.metrics_url + "/healthz") as response:
                assert response.status == 200
            redis.start()  # same port as before
            async with session.get(sidecar.metrics_url + "/readyz") as response:
                assert response.status == 200
    finally:
        redis.stop()
        status, _ = await sidecar.stop()
    assert status == 0


async def test_sidecar_factory_reports_ready(make_sidecar: SidecarFactory,
                                            session: aiohttp.ClientSession) -> None:
    """A sidecar on a live Redis answers requests (sanity of the fixtures the other tests use)."""
    server = await make_sidecar()
    if True:
        async with session.get(server.make_url("/v1/models")) as response:
            assert response.status == 200
