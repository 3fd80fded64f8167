"""The request's way for /v1/*, step by step as in DESIGN.md section 2.

The order of the checks is written out once, here, as plain sequential code.
"""

from __future__ import annotations

from time import perf_counter
from urllib.parse import quote

from aiohttp import web

from sidecar.appstate import AUTH, CONTEXT, SETTINGS, UPSTREAM, RequestContext
from sidecar.errors import InsufficientScope, NotFound
from sidecar.model import Principal
from sidecar.proxy.body import check_content_headers, read_body
from sidecar.proxy.openai import parse_body
from sidecar.proxy.relay import relay_stream, relay_whole

# path -> (route name, method)
POST_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
ROUTE_OF_RESOURCE = {**POST_ROUTES, "/v1/models": "models", "/v1/models/{model}": "models"}


def presented_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key` (never from the URL)."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("X-API-Key")


async def authorize(request: web.Request, ctx: RequestContext) -> Principal:
    """Steps 2-3: who is calling, and may they use this route."""
    principal = await request.app[AUTH].authenticate(presented_key(request))
    ctx.key_id = principal.key_id
    if ctx.route not in principal.scopes:
        raise InsufficientScope()
    return principal


async def handle_model_call(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings."""
    settings = request.app[SETTINGS]
    upstream = request.app[UPSTREAM]
    ctx = request[CONTEXT]
    # 1. context: set by the middleware (request id, timing, error rendering).
    # 2-3. auth and scope.
    await authorize(request, ctx)
    # 4. parse: capped body, JSON, shape.
    check_content_headers(request)
    raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    parsed = parse_body(ctx.route, raw, settings.max_json_depth)
    # 5-7. input guards, limits, abuse: (their issues).
    # 8. upstream.
    headers = upstream.headers_for(request.headers, ctx.request_id)
    sent = perf_counter()
    async with upstream.request("POST", request.path, raw, headers) as response:
        ctx.upstream_s += perf_counter() - sent
        if parsed.stream and response.status == 200 and response.content_type == "text/event-stream":
            # 9-10. output guards and settlement run inside the relay (their issues).
            return await relay_stream(request, upstream, response, ctx)
        return await relay_whole(upstream, response, ctx)


async def handle_models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models and /v1/models/{model}."""
    upstream = request.app[UPSTREAM]
    ctx = request[CONTEXT]
    await authorize(request, ctx)
    model = request.match_info.get("model")
    if model is not None and not 0 < len(model) <= 256:
        raise NotFound("Unknown model.")
    path = "/v1/models" if model is None else "/v1/models/" + quote(model, safe="")
    headers = upstream.headers_for(request.headers, ctx.request_id)
    sent = perf_counter()
    async with upstream.request("GET", path, None, headers) as response:
        ctx.upstream_s += perf_counter() - sent
        return await relay_whole(upstream, response, ctx)


def add_routes(app: web.Application) -> None:
    for path in POST_ROUTES:
        app.router.add_post(path, handle_model_call)
    app.router.add_get("/v1/models", handle_models, allow_head=False)
    app.router.add_get("/v1/models/{model}", handle_models, allow_head=False)
