"""Fixtures for the abuse tests: a service on the session's real redis-server, built per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sidecar.abuse import AbuseService
from sidecar.metrics import Metrics
from sidecar.settings import AbuseSettings, StoreSettings
from sidecar.store.redis import Store, connect
from tests.cluster import redis_cluster  # noqa: F401  (fixture, re-exported for these tests)

ServiceFactory = Callable[..., Awaitable[AbuseService]]


@pytest.fixture
async def make_service(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Build an AbuseService with the given AbuseSettings fields on a clean Redis database."""
    stores: list[Store] = []

    async def factory(*, store_url: str | None = None, timeout_s: float = 0.25,
                      **fields: Any) -> AbuseService:
        store = await connect(StoreSettings(url=store_url or redis_url, timeout_s=timeout_s,
                                            connect_timeout_s=0.2))
        stores.append(store)
        return AbuseService(store, AbuseSettings(**fields), Metrics())

    yield factory
    for store in stores:
        await store.close()


def suspects(service: AbuseService, signal: str) -> float:
    """Value of sidecar_abuse_suspects_total{signal} in the service's registry."""
    value = service.metrics.registry.get_sample_value("sidecar_abuse_suspects_total",
                                                      {"signal": signal})
    return value or 0.0
