"""The hot path's Redis connection: one write per loop turn, and recovery from lost connections."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.settings import StoreSettings
from sidecar.store.redis import Store, StoreError, connect
from tests.conftest import RedisProcess


@pytest.fixture
async def store(redis_url: str) -> Store:
    return await connect(StoreSettings(url=redis_url, timeout_s=1.0))


async def test_concurrent_scripts_share_writes(store: Store, redis_proc: RedisProcess) -> None:
    """200 concurrent script calls all answer, sent in a handful of socket writes, not 200."""
    assert store.fast is not None
    await store.run("health", [], [])
    before = store.fast.writes
    replies = await asyncio.gather(*(store.run("health", [], []) for _ in range(200)))
    assert all(len(r) == 2 for r in replies)
    assert store.fast.writes - before <= 3
    await store.close()


async def test_killed_connection_is_replaced(store: Store, redis_proc: RedisProcess) -> None:
    """After Redis drops our connection, the next calls open a new one by themselves."""
    assert await store.healthy()
    redis_proc.client().client_kill_filter(_type="normal", skipme=True)
    outcomes = []
    for _ in range(3):
        try:
            await store.run("health", [], [])
            outcomes.append("ok")
        except StoreError:
            outcomes.append("error")
    assert outcomes[-1] == "ok" and outcomes.count("error") <= 1
    await store.close()


async def test_restarted_redis_is_used_again(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A Redis restart (scripts gone, connection gone) costs at most one failed call."""
    redis = RedisProcess(tmp_path_factory.mktemp("redis-restart"))
    redis.start()
    store = await connect(StoreSettings(url=redis.url, timeout_s=1.0))
    try:
        assert await store.healthy()
        redis.stop()
        assert not await store.healthy()
        redis.start()
        results = [await store.healthy() for _ in range(2)]
        assert results[-1] is True
    finally:
        await store.close()
        redis.stop()
