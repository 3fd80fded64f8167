"""Read a request body under a size cap and a deadline, before anything parses it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from sidecar.errors import BodyTooLarge, RequestTimeout, UnsupportedMediaType


def media_type(value: str | None) -> str:
    """The media type of a Content-Type value, lower-cased, without parameters (aiohttp's own
    `content_type` parses the whole header with the email package on first use: a few
    microseconds per request for one comparison)."""
    return (value or "").partition(";")[0].strip().lower()


def check_content_headers(request: web.Request) -> None:
    """JSON only, and no Content-Encoding: a compressed body could inflate past every cap."""
    if media_type(request.headers.get("Content-Type")) != "application/json":
        raise UnsupportedMediaType()
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType()


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, or 413 as soon as it passes `max_bytes` (chunked bodies included)."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise BodyTooLarge(f"The request body is larger than {max_bytes} bytes.")
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (the usual case for a chat request): take it
        # without a deadline or an iterator.
        data = content.read_nowait()
        if len(data) > max_bytes:
            raise BodyTooLarge(f"The request body is larger than {max_bytes} bytes.")
        return data
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_any():
                size += len(chunk)
                if size > max_bytes:
                    raise BodyTooLarge(f"The request body is larger than {max_bytes} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout() from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
