"""Every typed key of application and request state (aiohttp discourages module globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sidecar.abuse import AbuseService
from sidecar.auth.apikeys import Authenticator
from sidecar.limits.limiter import Limiter
from sidecar.metrics import Metrics
from sidecar.policies import Policies
from sidecar.proxy.context import RequestContext
from sidecar.proxy.guarding import GuardRunner
from sidecar.proxy.upstream import Upstream
from sidecar.settings import Settings
from sidecar.store.redis import Store
from sidecar.tracing import Tracing
from sidecar.usage import UsageService


class Background:
    """Work that must outlive its request (settlement after the answer or a client disconnect);
    shutdown waits for it."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Future[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, None]) -> None:
        self.track(asyncio.create_task(coro))

    def track(self, future: asyncio.Future[Any] | None) -> None:
        """Wait for `future` at shutdown too (a store call finishing on its own)."""
        if future is not None and not future.done():
            self.tasks.add(future)
            future.add_done_callback(self.tasks.discard)


@dataclass(slots=True)
class Lifecycle:
    """Process-wide flags the health endpoints read."""

    serving: bool = False  # every listener is up
    draining: bool = False


SETTINGS = web.AppKey("settings", Settings)
POLICIES = web.AppKey("policies", Policies)
GUARDS = web.AppKey("guards", GuardRunner)
LIMITER = web.AppKey("limiter", Limiter)
ABUSE = web.AppKey("abuse", AbuseService)
BACKGROUND = web.AppKey("background", Background)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
UPSTREAM = web.AppKey("upstream", Upstream)
ANTHROPIC_UPSTREAM = web.AppKey("anthropic_upstream", Upstream)  # where /v1/messages goes
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
AUTH = web.AppKey("auth", Authenticator)
USAGE = web.AppKey("usage", UsageService)
TRACING = web.AppKey("tracing", Tracing)
CONTEXT = web.RequestKey("context", RequestContext)
