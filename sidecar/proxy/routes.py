"""The request's way for /v1/*, step by step as in DESIGN.md section 2.

The order of the checks is written out once, here, as plain sequential code.
"""

from __future__ import annotations

from time import perf_counter
from urllib.parse import quote

import orjson
from aiohttp import web

from sidecar.abuse import enforce
from sidecar.appstate import (
    ABUSE,
    AUTH,
    BACKGROUND,
    CONTEXT,
    INPUT_GUARD,
    LIMITER,
    METRICS,
    OUTPUT_GUARD,
    SETTINGS,
    UPSTREAM,
)
from sidecar.errors import InsufficientScope, NotFound, SidecarError
from sidecar.guards.fingerprint import Features, fingerprint
from sidecar.limits.limiter import Admission
from sidecar.limits.tokens import estimate_tokens, prompt_tokens
from sidecar.model import Principal
from sidecar.proxy.body import check_content_headers, media_type, read_body
from sidecar.proxy.context import RequestContext
from sidecar.proxy.conversations_api import (
    CONVERSATION_RESOURCES,
    ReplyCollector,
    begin_turn,
    conversation_request,
    finish_turn,
    message_text,
)
from sidecar.proxy.openai import ParsedRequest, parse_body
from sidecar.proxy.relay import relay_stream, relay_whole
from sidecar.proxy.response import ResponseProcessor

# path -> (route name, method)
POST_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
ROUTE_OF_RESOURCE = {**POST_ROUTES, "/v1/models": "models", "/v1/models/{model}": "models",
                     **CONVERSATION_RESOURCES}


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
    app = request.app
    settings = app[SETTINGS]
    ctx = request[CONTEXT]
    # 1. context: set by the middleware (request id, timing, error rendering).
    # 2-3. auth and scope.
    principal = await authorize(request, ctx)
    # 4. parse: capped body, JSON, shape.
    check_content_headers(request)
    raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    parsed = parse_body(ctx.route, raw, settings.max_json_depth)
    conversation = conversation_request(request.headers, ctx.route)
    # 5. input guards: validate, sanitize, injection, optional PII redaction; prepare output scan.
    changed = app[INPUT_GUARD].check(parsed, ctx)
    turn = await begin_turn(app, principal, conversation, parsed) if conversation else None
    changed = changed or bool(turn and turn.replayed)
    scan, canary_placed = app[OUTPUT_GUARD].prepare(parsed)
    strip_usage = ask_for_stream_usage(parsed)
    body = orjson.dumps(parsed.body) if changed or canary_placed or strip_usage else raw
    # 6-7. limits and abuse: two scripts issued together, so they share one write and one
    # round trip on the store's pipelined connection.
    prompt_estimate = prompt_tokens(ctx.route, parsed.body)
    estimate = estimate_tokens(ctx.route, parsed.body, settings.limits, prompt_estimate)
    admission = await admit_and_judge(app, principal, ctx, parsed, estimate)
    # 8. upstream; 9. output guards inside the relay; 10. settlement.
    processor = ResponseProcessor(ctx.route, scan, app[METRICS], strip_usage)
    collector = ReplyCollector() if turn else None
    settled = False
    try:
        result = await forward(request, ctx, body, parsed.stream, processor, admission.headers,
                               collector)
        settled = True
        # Settlement is bookkeeping the client need not wait for (shutdown waits for it).
        settle_later(app, principal, admission, processor, prompt_estimate, failed=bool(ctx.reason))
        if turn and collector and not ctx.reason and result.status == 200:
            # Stored as the client received it (after output redaction), before the next turn
            # can ask for it; never fails the reply.
            if not result.prepared:
                await result.prepare(request)
                await result.write_eof()
            await finish_turn(app, turn, ctx.request_id, collector)
        return result
    except BaseException:
        if not settled:
            # Outlives the client's disconnect: usage streamed so far is still charged.
            settle_later(app, principal, admission, processor, prompt_estimate, failed=True)
        raise


async def admit_and_judge(app: web.Application, principal: Principal, ctx: RequestContext,
                          parsed: ParsedRequest, estimate: int) -> Admission:
    """Admission and the model-extraction check together (both scripts leave in one write:
    one round trip, no task); an abuse refusal wins."""
    limiter = app[LIMITER]
    abuse = app[ABUSE]
    if not abuse.settings.enabled:
        return await limiter.admit(principal, ctx.request_id, estimate)
    limiter.refuse_if_denied(principal)  # over its request limit: nothing goes to the store
    check = abuse.begin(principal, request_features(parsed))
    refusal: SidecarError | None = None
    try:
        admitted = await limiter.admit(principal, ctx.request_id, estimate)
    except SidecarError as exc:
        refusal = exc
    except BaseException:
        check.abandon()
        raise
    try:
        enforce(await check.verdict())
    except SidecarError:
        if refusal is None:
            await limiter.refund(admitted)
        raise
    if refusal is not None:
        raise refusal
    return admitted


def request_features(parsed: ParsedRequest) -> Features:
    """What the extraction signals look at: the caller's own question, not system prompts or
    history (or every app would look templated); for embeddings, the first inputs."""
    body = parsed.body
    if parsed.route == "chat":
        users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
        return fingerprint(message_text(users[-1]) if users else "")
    if parsed.route == "completions":
        prompt = body["prompt"]
        return fingerprint(prompt if isinstance(prompt, str) else " ".join(map(str, prompt[:16])))
    inputs = body["input"]
    items = [inputs] if isinstance(inputs, str) else inputs
    return fingerprint("\n".join(str(i) for i in items[:16]), inputs=len(items))


def ask_for_stream_usage(parsed: ParsedRequest) -> bool:
    """Streams must report usage for settlement: ask the provider for it, and remember to drop
    that extra chunk when the client did not ask for it itself."""
    if not parsed.stream or parsed.route == "embeddings":
        return False
    options = parsed.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    parsed.body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}
    return True


async def forward(request: web.Request, ctx: RequestContext, body: bytes, stream: bool,
                  processor: ResponseProcessor, headers: dict[str, str],
                  collector: ReplyCollector | None = None) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    sent = perf_counter()
    async with upstream.request("POST", request.path, body,
                                upstream.headers_for(request.headers, ctx.request_id)) as exchange:
        response, deadline = exchange
        ctx.upstream_s += perf_counter() - sent
        if stream and response.status == 200 and \
                media_type(response.headers.get("Content-Type")) == "text/event-stream":
            return await relay_stream(request, upstream, response, ctx, processor, headers, collector,
                                      deadline)
        return await relay_whole(upstream, response, ctx, processor, headers, collector)


def settle_later(app: web.Application, principal: Principal, admission: Admission,
                 processor: ResponseProcessor, prompt_estimate: int, *, failed: bool) -> None:
    """Replace the reservation with what was used, without making the client wait: the
    provider's usage when it reported it (both store calls leave now, in one write, and are
    booked by callback: no task); otherwise, after a failure, the prompt plus what was
    streamed, or nothing at all (in a background task)."""
    limiter = app[LIMITER]
    background = app[BACKGROUND]
    if processor.usage_total is not None:
        metrics = app[METRICS]
        metrics.prompt_tokens.inc(processor.usage_prompt)
        metrics.completion_tokens.inc(processor.usage_completion)
        background.track(limiter.settle_soon(admission, processor.usage_total))
        background.track(app[ABUSE].record_output_soon(principal, processor.usage_completion,
                                                       admission.redis_time_ms))
    elif failed and processor.streamed_chars:
        used = prompt_estimate + (processor.streamed_chars + 3) // 4
        background.start(limiter.settle(admission, min(used, admission.reserved_tokens or used)))
    elif failed:
        background.start(limiter.refund(admission))


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
    async with upstream.request("GET", path, None, headers) as (response, _):
        ctx.upstream_s += perf_counter() - sent
        return await relay_whole(upstream, response, ctx)


def add_routes(app: web.Application) -> None:
    for path in POST_ROUTES:
        app.router.add_post(path, handle_model_call)
    app.router.add_get("/v1/models", handle_models, allow_head=False)
    app.router.add_get("/v1/models/{model}", handle_models, allow_head=False)
