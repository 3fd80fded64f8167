"""IN-4: header floods and over-long request lines are refused by the HTTP parser with a 4xx
before any handler runs, without a traceback in the answer."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import SidecarFactory

CHAT = "/v1/chat/completions"


async def raw_request(server: TestServer, head: bytes) -> bytes:
    """Send a raw request head and return everything the server answers before closing."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


def head(path: str = CHAT, headers: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Length: 0", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


FLOODS = [
    ("200 headers", head(headers=[(f"X-H{i}", "v") for i in range(200)])),
    ("64 KiB header value", head(headers=[("X-Big", "a" * 65536)])),
    ("16 KiB URL", head(path=CHAT + "?q=" + "a" * 16384)),
    ("16 KiB header name", head(headers=[("X-" + "n" * 16384, "v")])),
]


@pytest.mark.parametrize(("case", "request_head"), FLOODS, ids=[c[0] for c in FLOODS])
async def test_header_floods_get_a_4xx_without_traceback(
    make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture, case: str, request_head: bytes,
) -> None:
    """Too many headers, a huge header, a huge URL: 400 or 431, no handler, no traceback text."""
    server = await make_sidecar()
    with caplog.at_level(logging.DEBUG):
        answer = await raw_request(server, request_head)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] in (b"400", b"413", b"414", b"431"), status_line
    assert b"Traceback" not in answer and b'File "' not in answer, answer[:300]
    assert_json_error(answer)
    handled = [r for r in caplog.records if r.name == "sidecar.access"]
    assert not handled, "the handler path ran for a request the parser should refuse"


def assert_json_error(answer: bytes) -> dict[str, str]:
    """The answer is the sidecar's JSON error (DESIGN.md section 5), not aiohttp's text."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code", "request_id"}, error
    assert error["type"] == "invalid_request_error"
    assert error["code"] in {"invalid_request", "body_too_large", "request_timeout"}, error
    assert error["request_id"].startswith("req_")
    return error


MARKER = "ZZQX"  # in every malformed part: the answer must not quote it back
MALFORMED = [
    ("NUL in the method", f"PO\x00ST{MARKER} {CHAT} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1")),
    ("unknown HTTP version", f"POST {CHAT} HTTP/7.{MARKER}\r\nHost: x\r\n\r\n".encode()),
    ("header without a colon", f"POST {CHAT} HTTP/1.1\r\nHost: x\r\n{MARKER} no colon\r\n\r\n".encode()),
    ("non-numeric Content-Length",
     f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: {MARKER}\r\n\r\n".encode()),
    ("bad chunk size", f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       f"{MARKER}\r\nabc\r\n0\r\n\r\n".encode()),
    ("control character in a header value",
     f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-A: a\x01{MARKER}\r\n\r\n".encode()),
    ("not HTTP at all", f"\x16\x03\x01{MARKER} TLS hello?\r\n\r\n".encode("latin-1")),
]


@pytest.mark.parametrize(("case", "request_head"), MALFORMED, ids=[c[0] for c in MALFORMED])
async def test_malformed_http_gets_the_json_error_format(
    make_sidecar: SidecarFactory, case: str, request_head: bytes,
) -> None:
    """What aiohttp's parser refuses is answered in our error format, quoting nothing back."""
    server = await make_sidecar()
    answer = await raw_request(server, request_head)
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    error = assert_json_error(answer)
    assert MARKER.encode() not in answer and MARKER.lower() not in error["message"].lower()


async def test_refused_requests_log_no_traceback(
    make_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture,
) -> None:
    """A request the HTTP parser refuses leaves at most one log line, and no traceback."""
    server = await make_sidecar()
    with caplog.at_level(logging.DEBUG):
        for _, request_head in FLOODS:
            await raw_request(server, request_head)
    assert not [r for r in caplog.records if r.exc_info], "tracebacks logged for refused requests"
    server_lines = [r for r in caplog.records if r.name.startswith("aiohttp")]
    assert len(server_lines) <= len(FLOODS)
