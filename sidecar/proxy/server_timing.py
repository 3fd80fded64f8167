"""The `Server-Timing` response header: what the sidecar itself added, and the provider's time.

An app sees in every answer how much of its latency was the sidecar (`sidecar`) and how much
the provider (`upstream`: until the whole answer, or for a stream until its first event), in
milliseconds, without scraping metrics: `Server-Timing: sidecar;dur=0.84, upstream;dur=152.3`.
Browsers' and HTTP clients' timing tools read the standard header.
"""

from __future__ import annotations

from time import perf_counter

from aiohttp import web

from sidecar.appstate import CONTEXT


async def add_server_timing(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: set the header from the request's timings as its headers leave."""
    ctx = request.get(CONTEXT)
    if ctx is None:
        return
    upstream = ctx.upstream_s
    own = max(perf_counter() - ctx.started - upstream, 0.0)
    value = f"sidecar;dur={own * 1000:.2f}"
    if upstream:
        value += f", upstream;dur={upstream * 1000:.2f}"
    response.headers["Server-Timing"] = value
