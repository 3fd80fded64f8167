"""create_app(settings): the only wiring point — the proxy, health/metrics and admin apps."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from time import perf_counter

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.abuse import AbuseService
from sidecar.admin import create_admin_app
from sidecar.appstate import (
    ABUSE,
    ANTHROPIC_UPSTREAM,
    AUTH,
    BACKGROUND,
    CONTEXT,
    GUARDS,
    LIFECYCLE,
    LIMITER,
    METRICS,
    POLICIES,
    SETTINGS,
    STORE,
    TRACING,
    UPSTREAM,
    USAGE,
    Background,
    Lifecycle,
)
from sidecar.auth.apikeys import Authenticator
from sidecar.auth.hashing import SecretHasher
from sidecar.auth.records import SCOPES, KeySpec
from sidecar.errors import InternalError, SidecarError
from sidecar.known_labels import known_labels
from sidecar.limits.limiter import Limiter
from sidecar.log import log_fields, quiet_parser_errors
from sidecar.metrics import Metrics, scrape_registry
from sidecar.policies import Policies
from sidecar.proxy.context import RequestContext
from sidecar.proxy.conversations_api import add_conversation_routes, setup_conversations
from sidecar.proxy.guarding import GuardRunner
from sidecar.proxy.parse_errors import install_json_parser_errors
from sidecar.proxy.relay import error_response, plain_error
from sidecar.proxy.routes import ROUTE_OF_RESOURCE, add_routes
from sidecar.proxy.server_timing import add_server_timing
from sidecar.proxy.upstream import ANTHROPIC, Upstream
from sidecar.settings import Settings
from sidecar.store.redis import connect
from sidecar.tracing import Tracing
from sidecar.usage import UsageService

log = logging.getLogger("sidecar")
access_log = logging.getLogger("sidecar.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SERVER_NAME = "ai-security-sidecar"
PROXY_APP = web.AppKey("proxy_app", web.Application)
SCRAPE = web.AppKey("scrape", CollectorRegistry)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def route_name(request: web.Request) -> str:
    """A bounded route label: the matched resource, or 'unknown' (never the raw path)."""
    resource = request.match_info.route.resource
    return ROUTE_OF_RESOURCE.get(resource.canonical, "unknown") if resource else "unknown"


_HTTP_CODES = {404: ("not_found", "Unknown URL."),
               405: ("method_not_allowed", "This method is not allowed on this URL.")}


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id and timing; turn every failure into the JSON error format."""
    metrics = request.app[METRICS]
    ctx = RequestContext(request_id=new_request_id(), route=route_name(request))
    request[CONTEXT] = ctx
    metrics.inflight.inc()
    response: web.StreamResponse | None = None
    try:
        try:
            response = await handler(request)
        except SidecarError as exc:
            ctx.reason = ctx.reason or exc.code
            metrics.blocked.labels(ctx.route, exc.reason or exc.code).inc()
            response = error_response(exc, ctx.request_id, ctx.route)
        except web.HTTPException as exc:
            code, message = _HTTP_CODES.get(exc.status, ("http_error", exc.reason))
            response = plain_error(exc.status, "invalid_request_error", code, message,
                                   ctx.request_id)
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except asyncio.CancelledError:
            # The client went away: 499, unless it had already received its whole reply.
            ctx.status = ctx.status or 499
            raise
        except Exception:
            log_fields(log, logging.ERROR, "unhandled error", request_id=ctx.request_id,
                       route=ctx.route)
            log.exception("unhandled error (request %s)", ctx.request_id)
            ctx.reason = "internal_error"
            response = error_response(InternalError(), ctx.request_id, ctx.route)
        ctx.status = response.status
        return response
    finally:
        metrics.inflight.dec()
        _account(request, ctx, metrics)


def _account(request: web.Request, ctx: RequestContext, metrics: Metrics) -> None:
    total = perf_counter() - ctx.started
    series = metrics.route(ctx.route)
    series.answered(ctx.status).inc()
    series.duration.observe(total)
    if ctx.upstream_s:
        series.upstream.observe(ctx.upstream_s)
    series.overhead.observe(max(total - ctx.upstream_s, 0.0))
    if not access_log.isEnabledFor(logging.INFO):
        return
    log_fields(access_log, logging.INFO, "request", request_id=ctx.request_id,
               method=request.method, route=ctx.route, status=ctx.status,
               duration_ms=round(total * 1000, 3), upstream_ms=round(ctx.upstream_s * 1000, 3),
               key_id=ctx.key_id or None, reason=ctx.reason or None)


async def _hide_server_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def create_app(settings: Settings, metrics: Metrics | None = None,
               tracing: Tracing | None = None) -> web.Application:
    """The proxy app; its cleanup context opens and closes the store and the upstream session."""
    quiet_parser_errors()
    install_json_parser_errors()
    app = web.Application(middlewares=[context_middleware], client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app[TRACING] = tracing if tracing is not None else Tracing.from_env()
    app[TRACING].install(app)  # nothing at all when tracing is off
    app[LIFECYCLE] = Lifecycle()
    app.on_response_prepare.append(_hide_server_version)
    app.on_response_prepare.append(add_server_timing)
    app[POLICIES] = Policies(settings)
    app[METRICS].export_known(known_labels(app[POLICIES]))
    app[GUARDS] = GuardRunner(app[METRICS])
    app[BACKGROUND] = Background()
    app.cleanup_ctx.append(_services)
    setup_conversations(app)
    add_routes(app)
    add_conversation_routes(app)
    return app


async def _services(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await connect(settings.store)
    app[STORE] = store
    upstream = Upstream(settings.upstream, settings.upstream.url, settings.upstream_key)
    await upstream.start()
    app[UPSTREAM] = upstream
    anthropic = Upstream(settings.upstream, settings.anthropic_url, settings.anthropic_key, ANTHROPIC)
    await anthropic.start()
    app[ANTHROPIC_UPSTREAM] = anthropic
    a = settings.auth
    hasher = SecretHasher(a.argon2_time_cost, a.argon2_memory_kib, a.argon2_parallelism,
                          a.max_concurrent_verifications)
    auth = Authenticator(store, hasher, a)
    app[AUTH] = auth
    app[LIMITER] = Limiter(store, settings.limits, app[METRICS])
    app[ABUSE] = AbuseService(store, settings.abuse, app[METRICS])
    app[USAGE] = UsageService(store, settings.usage, app[METRICS])
    if store.is_memory and a.demo_key:
        await _print_demo_key(auth)
    stop = asyncio.Event()
    monitor = asyncio.create_task(_watch_store(app, stop))
    listener = asyncio.create_task(auth.listen(stop))
    try:
        yield
    finally:
        # Stopped by an event, not cancelled: a cancel racing the store deadline can be
        # swallowed by asyncio.timeout on Python 3.11, which would leave the loop running.
        stop.set()
        await monitor
        await listener
        if app[BACKGROUND].tasks:
            await asyncio.wait(set(app[BACKGROUND].tasks), timeout=settings.store.timeout_s * 4)
        hasher.close()
        app[GUARDS].close()
        await upstream.close()
        await anthropic.close()
        await store.close()


async def _print_demo_key(auth: Authenticator) -> None:
    """On the embedded store, a key for trying the sidecar at once; printed once, never logged."""
    raw_key, _ = await auth.records.create(KeySpec(tenant="demo", scopes=SCOPES, label="demo"))
    print(f"Demo API key (tenant 'demo', shown once, embedded store only): {raw_key}", flush=True)


async def _watch_store(app: web.Application, stop: asyncio.Event, interval_s: float = 5.0) -> None:
    """Keep the `sidecar_store_up` gauge current until `stop` is set."""
    while not stop.is_set():
        up = await app[STORE].healthy()
        app[METRICS].store_up.set(1 if up else 0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    """Whether this sidecar can serve: its listeners are up and it is not draining. The store
    is reported (body and `sidecar_store_up`) but, unless `metrics.ready_requires_store` is
    set, does not fail readiness: one Redis blip must not take every pod of every app that
    shares it out of its Service."""
    proxy = request.app[PROXY_APP]
    lifecycle = proxy[LIFECYCLE]
    if lifecycle.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not lifecycle.serving:
        return web.json_response({"status": "starting"}, status=503)
    up = STORE in proxy and await proxy[STORE].healthy()
    proxy[METRICS].store_up.set(1 if up else 0)
    store = "ok" if up else "degraded"
    if not up and proxy[SETTINGS].metrics.ready_requires_store:
        return web.json_response({"status": "store_unavailable", "store": store}, status=503)
    return web.json_response({"status": "ready", "store": store})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[SCRAPE]),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_admin(proxy_app: web.Application) -> web.Application | None:
    """The admin listener's app, or None (logged) when no admin token is configured."""
    token = proxy_app[SETTINGS].admin.token
    if not token:
        log.warning("admin API off: set SIDECAR_ADMIN_TOKEN to manage keys over HTTP")
        return None
    return create_admin_app(proxy_app, token)


def create_health_app(proxy_app: web.Application) -> web.Application:
    """The metrics/health listener: /metrics, /healthz (liveness), /readyz (store usable)."""
    app = web.Application()
    app[PROXY_APP] = proxy_app
    app[SCRAPE] = scrape_registry(proxy_app[METRICS].registry)
    app.on_response_prepare.append(_hide_server_version)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app
