"""Relay the provider's answer to the client: whole JSON bodies, or SSE event by event.

Once a stream has started, an error can no longer become an HTTP status, so every failure
after that point ends the stream with one SSE error event in the API's own shape (OpenAI: an
error object and `[DONE]`; Anthropic and Responses: their typed `error` event).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from time import perf_counter

import aiohttp
import orjson
from aiohttp import web

from sidecar.errors import OutputBlocked, SidecarError, UpstreamError, UpstreamTimeout, error_body
from sidecar.proxy import anthropic
from sidecar.proxy.body import media_type
from sidecar.proxy.context import RequestContext
from sidecar.proxy.conversations_api import ReplyCollector
from sidecar.proxy.openai import SSEDecoder
from sidecar.proxy.response import ResponseProcessor
from sidecar.proxy.upstream import Upstream

log = logging.getLogger("sidecar.proxy")

# Provider response headers worth passing back to the client.
_RESPONSE_HEADERS = ("openai-model", "openai-processing-ms", "openai-version")


def _passed_headers(upstream_response: aiohttp.ClientResponse, ctx: RequestContext) -> dict[str, str]:
    headers = {"X-Request-Id": ctx.request_id}
    for name in _RESPONSE_HEADERS:
        value = upstream_response.headers.get(name)
        if value is not None:
            headers[name] = value
    return headers


async def relay_whole(
    upstream: Upstream, upstream_response: aiohttp.ClientResponse, ctx: RequestContext,
    processor: ResponseProcessor | None = None, extra_headers: Mapping[str, str] | None = None,
    collector: ReplyCollector | None = None,
) -> web.Response:
    """A non-streamed answer: 2xx relayed (after the output guards), provider 4xx relayed
    scrubbed, anything else 502."""
    status = upstream_response.status
    if status >= 500 or 300 <= status < 400 or status < 200:
        raise UpstreamError()
    started = perf_counter()
    raw = await upstream.read_limited(upstream_response)
    ctx.upstream_s += perf_counter() - started
    headers = _passed_headers(upstream_response, ctx)
    if extra_headers:
        headers.update(extra_headers)
    if status >= 400:
        if status == 429 and "Retry-After" in upstream_response.headers:
            headers["Retry-After"] = upstream_response.headers["Retry-After"][:32]
        ctx.reason = "provider_refused"
        error = upstream.client_error_body(raw, status, ctx.request_id)
        if processor is not None:
            processor.scrub_error(error)
        body = orjson.dumps(processor.error_shape(error) if processor is not None else error)
        return web.Response(body=body, status=status, content_type="application/json",
                            headers=headers)
    if media_type(upstream_response.headers.get("Content-Type")) != "application/json":
        raise UpstreamError()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError() from None
    if processor is not None and processor.on_json(obj):
        raw = orjson.dumps(obj)
    if collector is not None:
        collector.from_json(obj)
    return web.Response(body=raw, status=status, content_type="application/json", headers=headers)


async def relay_stream(
    request: web.Request,
    upstream: Upstream,
    upstream_response: aiohttp.ClientResponse,
    ctx: RequestContext,
    processor: ResponseProcessor,
    extra_headers: Mapping[str, str] | None = None,
    collector: ReplyCollector | None = None,
    deadline: asyncio.Timeout | None = None,
) -> web.StreamResponse:
    """Forward SSE events as they arrive (through the output guards); end in a well-formed
    error event if the provider fails, the whole-exchange deadline passes or the output policy
    blocks. The exchange's `deadline` is taken over: it is switched off and the same instant
    guards the read loop here, so exactly one timer runs and its expiry becomes an error event
    (two nested timers racing is how a stalled stream once outlived its deadline)."""
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + upstream.settings.total_timeout_s
    if deadline is not None:
        ends_at = deadline.when() or ends_at
        deadline.reschedule(None)
    headers = _passed_headers(upstream_response, ctx)
    if extra_headers:
        headers.update(extra_headers)
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    async def write(data: bytes) -> None:
        if collector is not None:
            collector.feed(data)  # what the client receives is what a conversation stores
        await response.write(data)

    decoder = SSEDecoder()
    saw_done = False
    failure: SidecarError | None = None
    content = upstream_response.content
    try:
        async with asyncio.timeout_at(ends_at):
            while True:
                waited = perf_counter()
                chunk = await content.readany()
                ctx.upstream_s += perf_counter() - waited
                if not chunk:
                    break
                out = []
                for event in decoder.feed(chunk):
                    out.append(processor.on_event(event))
                    saw_done = processor.ended
                    if processor.blocked or saw_done:
                        break
                if out:
                    await write(b"".join(out))
                if processor.blocked or saw_done:
                    break
        if not processor.blocked:
            for event in decoder.flush():
                await write(processor.on_event(event))
                saw_done = processor.ended
        if processor.blocked:
            failure = OutputBlocked()
        elif not saw_done:
            failure = UpstreamError("The model provider ended the stream early.")
    except OutputBlocked as exc:  # a field the output policy blocks, scanned whole in an event
        processor.blocked = True
        failure = exc
    except TimeoutError:
        failure = UpstreamTimeout()
    except (aiohttp.ClientError, ValueError):
        failure = UpstreamError()
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("stream relay failed", extra={"fields": {"request_id": ctx.request_id}})
        failure = SidecarError()
    if failure is not None:
        ctx.reason = failure.code
        if not processor.blocked:
            await write(processor.flush())
        await write(processor.error_event(failure, ctx.request_id))
    await response.write_eof()
    return response


def error_response(error: SidecarError, request_id: str, route: str = "") -> web.Response:
    """The JSON response for a sidecar error, with its extra headers (Retry-After, ...), in the
    route's API shape (Anthropic's on /v1/messages, OpenAI's everywhere else)."""
    headers = {"X-Request-Id": request_id, **error.headers}
    body = anthropic.error_body(error, request_id) if route == anthropic.ROUTE \
        else error.body(request_id)
    response = web.Response(body=body, status=error.status,
                            content_type="application/json", headers=headers)
    if error.status in (408, 413):
        response.force_close()  # the rest of the body was never read
    return response


def plain_error(status: int, type_: str, code: str, message: str, request_id: str) -> web.Response:
    """A JSON error for statuses that have no SidecarError class (aiohttp's own 4xx)."""
    return web.Response(body=error_body(message, type_, code, request_id), status=status,
                        content_type="application/json", headers={"X-Request-Id": request_id})
