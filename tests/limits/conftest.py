"""Fixtures for limiter tests: a store on the real redis-server, limiters built from rules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sidecar.limits import Limiter
from sidecar.metrics import Metrics
from sidecar.model import LimitRule, Principal
from sidecar.settings import LimitsSettings, StoreSettings
from sidecar.store.redis import Store, connect
from tests.cluster import redis_cluster  # noqa: F401  (fixture, re-exported for these tests)

LimiterFactory = Callable[..., Awaitable[Limiter]]


def principal(key_id: str = "key1", tenant: str = "acme", *rules: LimitRule, lineage: str = "") -> Principal:
    """A principal with its own key rules (none: the settings' key rules apply)."""
    return Principal(key_id=key_id, tenant=tenant, scopes=frozenset({"chat"}), limits=rules,
                     lineage=lineage)


def rule(window_s: int, requests: int | None = None, tokens: int | None = None,
         mode: str = "enforce") -> LimitRule:
    return LimitRule(window_s=window_s, requests=requests, tokens=tokens, mode=mode)


async def open_store(url: str, timeout_s: float = 2.0, **kw: Any) -> Store:
    return await connect(StoreSettings(url=url, timeout_s=timeout_s, **kw))


@pytest.fixture
async def make_limiter(redis_url: str) -> AsyncIterator[LimiterFactory]:
    """Build limiters on the session's redis-server (flushed); stores are closed afterwards."""
    stores: list[Store] = []

    async def factory(*, key: tuple[LimitRule, ...] = (), tenant: tuple[LimitRule, ...] = (),
                      url: str | None = None, timeout_s: float = 2.0, metrics: Metrics | None = None,
                      **limits: Any) -> Limiter:
        store = await open_store(url or redis_url, timeout_s)
        stores.append(store)
        settings = LimitsSettings(key=key, tenant=tenant, **limits)
        return Limiter(store, settings, metrics or Metrics())

    yield factory
    for store in stores:
        await store.close()
