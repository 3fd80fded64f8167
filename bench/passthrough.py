"""The floor: a minimal aiohttp pass-through (one shared ClientSession, uvloop), no checks at all."""

from __future__ import annotations

import sys

import aiohttp
import uvloop
from aiohttp import web


async def _session(app: web.Application) -> object:
    app["session"] = aiohttp.ClientSession()
    yield
    await app["session"].close()


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app["session"].post(request.app["upstream"] + request.path, data=body,
                                           headers={"Content-Type": "application/json"}) as resp:
        return web.Response(body=await resp.read(), status=resp.status,
                            content_type="application/json")


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    app = web.Application()
    app["upstream"] = upstream
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/chat/completions", forward)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
