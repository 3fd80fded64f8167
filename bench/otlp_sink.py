"""An OTLP/HTTP trace sink for `run_bench.py --tracing`: accepts every export, keeps nothing,
counts the bytes, so the benchmark measures the sidecar's tracing cost, not a collector's."""

from __future__ import annotations

import sys

from aiohttp import web


async def traces(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")


if __name__ == "__main__":
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
