"""Fixtures for conversation tests: the service on the session's real redis-server."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sidecar.conversations import ConversationService, Keyring
from sidecar.settings import ConversationSettings, StoreSettings
from sidecar.store.redis import Store, connect

ServiceFactory = Callable[..., Awaitable[ConversationService]]


def new_master() -> str:
    """A random master key as an operator would set it (base64 of 32 bytes)."""
    return base64.b64encode(os.urandom(32)).decode()


def keyring_of(*masters: str) -> Keyring:
    return Keyring([base64.b64decode(m) for m in masters])


@pytest.fixture
async def make_service(redis_url: str) -> AsyncIterator[ServiceFactory]:
    """Build services on the test's clean Redis; keyword arguments are ConversationSettings."""
    stores: list[Store] = []

    async def factory(keyring: Keyring | None = None, url: str | None = None,
                      **settings: Any) -> ConversationService:
        store = await connect(StoreSettings(url=url or redis_url, timeout_s=2.0))
        stores.append(store)
        return ConversationService(store, ConversationSettings(**settings), keyring)

    yield factory
    for store in stores:
        await store.close()
