"""Every bad input gets its status and an OpenAI-style error code, never a traceback."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import SidecarFactory

CHAT = "/v1/chat/completions"
GOOD = b'{"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}'
JSON = {"Content-Type": "application/json"}


async def _boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internal detail /etc/passwd")


def _add_boom(app: web.Application) -> None:
    app.router.add_get("/v1/_test_boom", _boom)


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> TestServer:
    return await make_sidecar(max_body_bytes="4096", max_json_depth="16", configure=_add_boom)


def assert_error_shape(body: dict[str, Any], code: str) -> None:
    error = body["error"]
    assert error["code"] == code
    assert set(error) == {"message", "type", "code", "request_id"}
    assert error["request_id"].startswith("req_")
    text = str(body)
    assert "Traceback" not in text and "Error(" not in text and "/etc/passwd" not in text


CASES = [
    ("not json", "POST", CHAT, b"{nope", JSON, 400, "invalid_json"),
    ("empty body", "POST", CHAT, b"", JSON, 400, "invalid_json"),
    ("json array", "POST", CHAT, b"[1, 2]", JSON, 400, "invalid_json"),
    ("invalid utf-8", "POST", CHAT, b'{"model": "\xff\xfe"}', JSON, 400, "invalid_json"),
    ("lone surrogate", "POST", CHAT, b'{"model": "\\ud800"}', JSON, 400, "invalid_json"),
    ("too deep", "POST", CHAT, b'{"a":' * 20 + b"1" + b"}" * 20, JSON, 400, "invalid_json"),
    ("deeper than orjson allows", "POST", CHAT, b"[" * 3000, JSON, 400, "invalid_json"),
    ("missing messages", "POST", CHAT, b'{"model": "m"}', JSON, 400, "invalid_request"),
    ("messages not a list", "POST", CHAT, b'{"model": "m", "messages": "x"}', JSON, 400,
     "invalid_request"),
    ("stream not a bool", "POST", CHAT, GOOD[:-1] + b', "stream": "yes"}', JSON, 400,
     "invalid_request"),
    ("wrong content type", "POST", CHAT, GOOD, {"Content-Type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("no content type", "POST", CHAT, GOOD, {}, 415, "unsupported_media_type"),
    ("compressed body", "POST", CHAT, gzip.compress(GOOD),
     {**JSON, "Content-Encoding": "gzip"}, 415, "unsupported_media_type"),
    ("too large", "POST", CHAT, b" " * 5000 + GOOD, JSON, 413, "body_too_large"),
    ("unknown route", "GET", "/v1/files", b"", {}, 404, "not_found"),
    ("admin path on the proxy", "GET", "/admin/keys", b"", {}, 404, "not_found"),
    ("wrong method", "GET", CHAT, b"", {}, 405, "method_not_allowed"),
    ("wrong method on models", "POST", "/v1/models", GOOD, JSON, 405, "method_not_allowed"),
    ("handler raises", "GET", "/v1/_test_boom", b"", {}, 500, "internal_error"),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "headers", "status", "code"), CASES,
                         ids=[c[0] for c in CASES])
async def test_bad_input(sidecar: TestServer, session: aiohttp.ClientSession, name: str,
                         method: str, path: str, body: bytes, headers: dict[str, str],
                         status: int, code: str) -> None:
    """Each bad request gets its status and code in the OpenAI error format."""
    async with session.request(method, sidecar.make_url(path), data=body or None,
                               headers=headers) as response:
        assert response.status == status
        assert response.headers["X-Request-Id"].startswith("req_")
        assert "aiohttp" not in response.headers.get("Server", "")
        assert "Python" not in response.headers.get("Server", "")
        assert_error_shape(await response.json(), code)


async def test_chunked_body_over_the_cap(sidecar: TestServer, session: aiohttp.ClientSession) -> None:
    """A chunked body without Content-Length is cut off with 413 once it passes the cap."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b" " * 1024

    async with session.post(sidecar.make_url(CHAT), data=chunks(), headers=JSON) as response:
        assert response.status == 413
        assert_error_shape(await response.json(), "body_too_large")


async def test_huge_declared_body_is_refused_before_reading(
    sidecar: TestServer, api_key: str,
) -> None:
    """A 100 MiB Content-Length is answered 413 at once, without sending the body."""
    reader, writer = await asyncio.open_connection(sidecar.host, sidecar.port)
    writer.write(
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {api_key}\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_slow_headers_are_cut_off(make_sidecar: SidecarFactory) -> None:
    """A client that never finishes its headers is disconnected after the header deadline."""
    sidecar = await make_sidecar(header_timeout_s="0.3")
    reader, writer = await asyncio.open_connection(sidecar.host, sidecar.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_slow_body_gets_408(make_sidecar: SidecarFactory, api_key: str) -> None:
    """A client that stops sending its body is answered 408 after the body deadline."""
    sidecar = await make_sidecar(body_timeout_s="0.3")
    reader, writer = await asyncio.open_connection(sidecar.host, sidecar.port)
    writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {api_key}\r\n"
                 "Content-Length: 100\r\n\r\n{\"model\":".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 408")
    writer.close()
