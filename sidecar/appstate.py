"""Every typed key of application and request state (aiohttp discourages module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter

from aiohttp import web

from sidecar.auth.apikeys import Authenticator
from sidecar.metrics import Metrics
from sidecar.proxy.upstream import Upstream
from sidecar.settings import Settings
from sidecar.store.redis import Store


@dataclass(slots=True)
class Lifecycle:
    """Process-wide flags the health endpoints read."""

    draining: bool = False


@dataclass(slots=True)
class RequestContext:
    """What one request carries along its way: id, route, timings, outcome."""

    request_id: str
    route: str
    started: float = field(default_factory=perf_counter)
    upstream_s: float = 0.0
    key_id: str = ""
    status: int = 0
    reason: str = ""


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
UPSTREAM = web.AppKey("upstream", Upstream)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
AUTH = web.AppKey("auth", Authenticator)
CONTEXT = web.RequestKey("context", RequestContext)
