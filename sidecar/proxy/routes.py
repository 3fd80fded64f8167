"""The request's way for /v1/*, step by step as in DESIGN.md section 2.

The order of the checks is written out once, here, as plain sequential code.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from aiohttp import web

from sidecar.abuse import enforce
from sidecar.appstate import (
    ABUSE,
    ANTHROPIC_UPSTREAM,
    AUTH,
    BACKGROUND,
    CONTEXT,
    GUARDS,
    LIMITER,
    METRICS,
    POLICIES,
    SETTINGS,
    TRACING,
    UPSTREAM,
    USAGE,
)
from sidecar.auth.models import model_allowed
from sidecar.errors import InsufficientScope, InvalidRequest, ModelNotAllowed, NotFound, SidecarError
from sidecar.guards.fingerprint import Features, fingerprint
from sidecar.limits.limiter import Admission
from sidecar.limits.tokens import (
    PER_REQUEST_TOKENS,
    clamp_cap,
    estimate_tokens,
    prompt_tokens,
    text_tokens,
)
from sidecar.model import UNTRUSTED, Principal
from sidecar.proxy.anthropic_turns import MessagesReplyCollector, begin_messages_turn
from sidecar.proxy.body import check_content_headers, media_type, read_body
from sidecar.proxy.context import RequestContext
from sidecar.proxy.conversations_api import (
    CONVERSATION_RESOURCES,
    ReplyCollector,
    begin_turn,
    conversation_request,
    message_text,
    store_turn_after_reply,
)
from sidecar.proxy.relay import relay_stream, relay_whole
from sidecar.proxy.requests import ParsedRequest, parse_object, parse_request
from sidecar.proxy.response import ResponseProcessor
from sidecar.proxy.typed_stream import MessagesProcessor, ResponsesProcessor
from sidecar.proxy.upstream import Upstream
from sidecar.tracing import mark_failed

# path -> (route name, method)
POST_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}
# A stored Responses reply and what can be done with it: (method, path suffix).
RESPONSE_RESOURCES = (("GET", ""), ("DELETE", ""), ("POST", "/cancel"), ("GET", "/input_items"))
ROUTE_OF_RESOURCE = {**POST_ROUTES, "/v1/models": "models", "/v1/models/{model}": "models",
                     **{"/v1/responses/{response_id}" + suffix: "responses"
                        for _, suffix in RESPONSE_RESOURCES},
                     **CONVERSATION_RESOURCES}
# Query parameters of those routes passed to the provider (everything else is dropped).
_RESPONSE_QUERY = frozenset({"after", "before", "limit", "order", "include", "include[]"})
# Routes whose provider reports usage on its own (no stream_options to ask for it) and whose
# replies need their own processor.
PROCESSORS: dict[str, type[ResponseProcessor]] = {"responses": ResponsesProcessor,
                                                  "messages": MessagesProcessor}
TWO_CREDENTIALS = ("Send the API key once: in Authorization: Bearer or in X-API-Key, "
                   "not in both and not twice.")


def presented_key(request: web.Request) -> str | None:
    """The key from `Authorization: Bearer <key>` or `X-API-Key` (never from the URL); a 400
    when credentials come twice or in both headers (no silent first-one-wins)."""
    if len(request.headers.getall("Authorization", ())) + \
            len(request.headers.getall("X-API-Key", ())) > 1:
        raise InvalidRequest(TWO_CREDENTIALS)
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("X-API-Key")


async def authorize(request: web.Request, ctx: RequestContext) -> Principal:
    """Steps 2-3: who is calling, and may they use this route."""
    principal = await request.app[AUTH].authenticate(presented_key(request), request.remote)
    ctx.key_id = principal.key_id
    if ctx.route not in principal.scopes:
        raise InsufficientScope()
    return principal


async def handle_model_call(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages."""
    app = request.app
    settings = app[SETTINGS]
    ctx = request[CONTEXT]
    tracing = app[TRACING]  # spans below are shared no-ops unless OTEL_* turns tracing on
    # 1. context: set by the middleware (request id, timing, error rendering).
    # 2-3. auth and scope.
    with tracing.span("sidecar.auth"):
        principal = await authorize(request, ctx)
    policy = app[POLICIES].for_principal(principal)
    # 4. parse: capped body, JSON (duplicate keys refused), shape, every text slot.
    check_content_headers(request)
    raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    parsed = parse_request(ctx.route, raw, settings.max_json_depth,
                           trusted_roles=policy.trusted_roles,
                           allow_token_ids=policy.allow_token_ids)
    model = parsed.body["model"]
    if not model_allowed(principal.models, model):
        raise ModelNotAllowed()  # before any guard, store call or provider call is spent
    upstream = app[ANTHROPIC_UPSTREAM] if ctx.route == "messages" else app[UPSTREAM]
    path = upstream.path_for(request.path, model)
    upstream_model = upstream.body_model(model)
    conversation = conversation_request(request.headers, ctx.route)
    # 5. input guards: the key's policy over every text slot.
    with tracing.span("sidecar.guards.input") as span:
        await app[GUARDS].check(policy, parsed, ctx)
        span.set_attribute("sidecar.guard.verdict", "allow")  # let through (maybe edited or flagged)
    # 6-7. limits and abuse: two scripts issued together, so they share one write and one
    # round trip on the store's pipelined connection.
    prompt_estimate = prompt_tokens(ctx.route, parsed.body) if ctx.route not in PROCESSORS \
        else PER_REQUEST_TOKENS + sum(text_tokens(s.text) for s in parsed.slots)
    # Replayed history joins after admission, so its most is reserved now.
    replay_allowance = settings.conversations.replay_max_tokens \
        if conversation and conversation.replay else 0
    estimate = estimate_tokens(ctx.route, parsed.body, settings.limits,
                               prompt_estimate + replay_allowance)
    # A completion cap no larger than what the estimate reserves for the completion.
    clamp_cap(ctx.route, parsed.body, estimate - prompt_estimate - replay_allowance)
    with tracing.span("sidecar.store.admit"):
        admission = await admit_and_judge(app, principal, ctx, parsed, estimate,
                                          prompt_estimate + replay_allowance)
    turn = None
    if conversation:
        # Replay reads stored history only once the request is admitted; the history then
        # goes through the same pipeline (size limits over the whole request).
        try:
            begin = begin_messages_turn if ctx.route == "messages" else begin_turn
            with tracing.span("sidecar.store.conversation"):
                turn = await begin(app, principal, conversation, parsed)
            if turn.replayed:
                parsed = parse_object(ctx.route, parsed.body, trusted_roles=policy.trusted_roles,
                                      allow_token_ids=policy.allow_token_ids)
                await app[GUARDS].check(policy, parsed, ctx)
        except BaseException:
            await app[LIMITER].refund(admission)
            raise
    scan = policy.output.prepare(ctx.route, parsed.slots, parsed.body) if policy.output else None
    strip_usage = ask_for_stream_usage(parsed)
    parsed.body["model"] = upstream_model
    body = parsed.serialize()
    # 8. upstream; 9. output guards inside the relay; 10. settlement.
    processor = PROCESSORS.get(ctx.route, ResponseProcessor)(
        ctx.route, scan, app[METRICS], strip_usage, policy.output_steps)
    processor.noting = tracing.enabled
    collector = (MessagesReplyCollector() if ctx.route == "messages" else ReplyCollector()) \
        if turn else None
    settled = False
    try:
        result = await forward(request, ctx, upstream, path, body, parsed.stream, processor,
                               admission.headers, collector)
        settled = True
        # Settlement is bookkeeping the client need not wait for (shutdown waits for it).
        settle_later(app, principal, admission, processor, prompt_estimate, failed=bool(ctx.reason),
                     model=ctx.model)
        if turn and collector and not ctx.reason and result.status == 200:
            # Stored as the client received it (after output redaction), before the next turn
            # can ask for it, even when the client hangs up now; never fails the reply.
            await store_turn_after_reply(request, result, turn, collector)
        return result
    except BaseException:
        if not settled:
            # Outlives the client's disconnect: usage streamed so far is still charged.
            settle_later(app, principal, admission, processor, prompt_estimate, failed=True,
                         model=ctx.model)
        raise


async def admit_and_judge(app: web.Application, principal: Principal, ctx: RequestContext,
                          parsed: ParsedRequest, estimate: int, prompt_estimate: int = 0) -> Admission:
    """Admission and the model-extraction check together (both scripts leave in one write:
    one round trip, no task); an abuse refusal wins. Cost budgets reserve the estimate's
    price (prompt at the input price, the rest at the output price)."""
    ctx.model = str(parsed.body.get("model", ""))  # what usage is booked under (step 10)
    money = app[SETTINGS].usage.cost_nusd(ctx.model, prompt_estimate, estimate - prompt_estimate)
    limiter = app[LIMITER]
    abuse = app[ABUSE]
    if not abuse.settings.enabled:
        return await limiter.admit(principal, ctx.request_id, estimate, money)
    limiter.refuse_if_denied(principal)  # over its request limit: nothing goes to the store
    check = abuse.begin(principal, request_features(parsed))
    refusal: SidecarError | None = None
    try:
        admitted = await limiter.admit(principal, ctx.request_id, estimate, money)
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
    if parsed.route in PROCESSORS:
        asked = [s.text for s in parsed.slots if s.role == "user" and s.trust == UNTRUSTED]
        return fingerprint(asked[-1] if asked else "")
    inputs = body["input"]
    items = [inputs] if isinstance(inputs, str) else inputs
    return fingerprint("\n".join(str(i) for i in items[:16]), inputs=len(items))


def ask_for_stream_usage(parsed: ParsedRequest) -> bool:
    """Streams must report usage for settlement: ask the provider for it, and remember to drop
    that extra chunk when the client did not ask for it itself."""
    if not parsed.stream or parsed.route not in ("chat", "completions"):
        return False
    options = parsed.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return False
    parsed.body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}
    return True


async def forward(request: web.Request, ctx: RequestContext, upstream: Upstream, path: str,
                  body: bytes, stream: bool, processor: ResponseProcessor, headers: dict[str, str],
                  collector: ReplyCollector | None = None) -> web.StreamResponse:
    tracing = request.app[TRACING]
    upstream_headers = upstream.headers_for(request.headers, ctx.request_id)
    with tracing.client_span(ctx.route, ctx.model, upstream.base_url) as span:
        tracing.inject(upstream_headers)  # the provider continues this trace (W3C traceparent)
        sent = perf_counter()
        async with upstream.request("POST", path, body, upstream_headers) as exchange:
            response, deadline = exchange
            ctx.upstream_s += perf_counter() - sent
            if stream and response.status == 200 and \
                    media_type(response.headers.get("Content-Type")) == "text/event-stream":
                result = await relay_stream(request, upstream, response, ctx, processor, headers,
                                            collector, deadline)
            else:
                result = await relay_whole(upstream, response, ctx, processor, headers, collector)
        if tracing.enabled:
            describe_response(span, response.status, processor)
        return result


def describe_response(span: Any, status: int, processor: ResponseProcessor) -> None:
    """GenAI attributes of the provider's answer (counts and names only, never text); a
    provider error marks the span failed with its status as `error.type`."""
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        mark_failed(span, str(status))
    if processor.response_model:
        span.set_attribute("gen_ai.response.model", processor.response_model)
    if processor.finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", processor.finish_reasons)
    if processor.usage_total is not None:
        span.set_attribute("gen_ai.usage.input_tokens", processor.usage_prompt)
        span.set_attribute("gen_ai.usage.output_tokens", processor.usage_completion)
    span.set_attribute("sidecar.guard.output.verdict", "block" if processor.blocked else "allow")


def settle_later(app: web.Application, principal: Principal, admission: Admission,
                 processor: ResponseProcessor, prompt_estimate: int, *, failed: bool,
                 model: str = "") -> None:
    """Replace the reservation with what was used, without making the client wait: the
    provider's usage when it reported it (settlement, the usage report and the abuse output
    count leave now, in one write, and are booked by callback: no task); otherwise, after a
    failure, the prompt plus what was streamed, or nothing at all (in a background task)."""
    limiter = app[LIMITER]
    background = app[BACKGROUND]
    prices = app[SETTINGS].usage
    if processor.usage_total is not None:
        metrics = app[METRICS]
        metrics.prompt_tokens.inc(processor.usage_prompt)
        metrics.completion_tokens.inc(processor.usage_completion)
        cost = prices.cost_nusd(model, processor.usage_prompt, processor.usage_completion) \
            if admission.cost_keys else 0
        background.track(limiter.settle_soon(admission, processor.usage_total, cost))
        background.track(app[ABUSE].record_output_soon(principal, processor.usage_completion,
                                                       admission.redis_time_ms))
        background.track(app[USAGE].record_soon(principal, model, processor.usage_prompt,
                                                processor.usage_completion))
    elif failed and processor.streamed_chars:
        streamed = (processor.streamed_chars + 3) // 4
        used = prompt_estimate + streamed
        cost = min(prices.cost_nusd(model, prompt_estimate, streamed), admission.reserved_cost)
        background.start(limiter.settle(admission, min(used, admission.reserved_tokens or used), cost))
    elif failed:
        background.start(limiter.refund(admission))


def _path_segment(value: str | None) -> bool:
    """An id that cannot climb out of its route (no `/`, not `.` or `..`, bounded)."""
    return value is not None and 0 < len(value) <= 256 and value not in (".", "..") \
        and "/" not in value


async def handle_models(request: web.Request) -> web.StreamResponse:
    """GET /v1/models (only the models the key may call) and /v1/models/{model}; from Anthropic
    when the client speaks its API (sends `anthropic-version`), as its SDK does."""
    anthropic = "anthropic-version" in request.headers
    upstream = request.app[ANTHROPIC_UPSTREAM if anthropic else UPSTREAM]
    ctx = request[CONTEXT]
    principal = await authorize(request, ctx)
    model = request.match_info.get("model")
    if model is not None and not _path_segment(model):
        raise NotFound("Unknown model.")
    if model is not None and not model_allowed(principal.models, model):
        raise ModelNotAllowed()
    path = "/v1/models" if model is None else "/v1/models/" + quote(model, safe="")
    headers = upstream.headers_for(request.headers, ctx.request_id)
    sent = perf_counter()
    async with upstream.request("GET", upstream.path_for(path), None, headers) as (response, _):
        ctx.upstream_s += perf_counter() - sent
        result = await relay_whole(upstream, response, ctx)
    if model is None and principal.models and result.status == 200:
        result.body = only_allowed(result.body, principal.models)
    return result


def only_allowed(raw: object, patterns: tuple[str, ...]) -> bytes:
    """A model list with only the entries a key's allow-list matches."""
    listing = orjson.loads(raw if isinstance(raw, bytes) else b"{}")
    data = listing.get("data") if isinstance(listing, dict) else None
    if isinstance(data, list):
        listing["data"] = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)
                           and model_allowed(patterns, m["id"])]
    return orjson.dumps(listing)


async def handle_stored_response(request: web.Request) -> web.StreamResponse:
    """GET and DELETE /v1/responses/{response_id}, POST .../cancel, GET .../input_items: what the
    provider answers goes through the output guards like any reply (the key's policy; there
    is no request to judge a system-prompt leak against). Only the listing parameters of the
    query are passed on; a stored reply comes back whole, never streamed."""
    app = request.app
    upstream = app[UPSTREAM]
    ctx = request[CONTEXT]
    principal = await authorize(request, ctx)
    response_id = request.match_info["response_id"]
    if not _path_segment(response_id):
        raise NotFound("Unknown response.")
    policy = app[POLICIES].for_principal(principal)
    scan = policy.output.prepare(ctx.route, []) if policy.output else None
    processor = ResponsesProcessor(ctx.route, scan, app[METRICS], False, policy.output_steps)
    suffix = request.path[request.path.rindex("/"):] if request.path.endswith(
        ("/cancel", "/input_items")) else ""
    path = upstream.path_for("/v1/responses/" + quote(response_id, safe="") + suffix)
    query = [(k, v) for k, v in request.query.items() if k in _RESPONSE_QUERY]
    if query:
        path += ("&" if "?" in path else "?") + urlencode(query)
    headers = upstream.headers_for(request.headers, ctx.request_id)
    sent = perf_counter()
    async with upstream.request(request.method, path, None, headers) as (response, _):
        ctx.upstream_s += perf_counter() - sent
        return await relay_whole(upstream, response, ctx, processor)


def add_routes(app: web.Application) -> None:
    for path in POST_ROUTES:
        app.router.add_post(path, handle_model_call)
    app.router.add_get("/v1/models", handle_models, allow_head=False)
    app.router.add_get("/v1/models/{model}", handle_models, allow_head=False)
    for method, suffix in RESPONSE_RESOURCES:
        app.router.add_route(method, "/v1/responses/{response_id}" + suffix, handle_stored_response)
