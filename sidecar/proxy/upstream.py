"""The provider connection: one ClientSession per process, header hygiene, timeouts -> errors.

The upstream URL is fixed by configuration (never chosen by the client); headers are built
from scratch so the client's credentials, cookies and hop-by-hop headers never leave the pod;
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from sidecar import __version__
from sidecar.errors import UpstreamError, UpstreamTimeout
from sidecar.settings import Secret, UpstreamSettings

# Client headers worth passing to the provider; everything else is dropped.
_PASS_THROUGH = ("openai-beta",)
_USER_AGENT = f"ai-security-sidecar/{__version__}"

# Anything in a provider error message that looks like a credential is scrubbed.
_KEY_LIKE = re.compile(
    r"(?:sk|sks|rk|pk)[-_][A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-]{6,}|AKIA[0-9A-Z]{16}"
    r"|\*{3,}[A-Za-z0-9]{2,}"
)


class Upstream:
    """Sends requests to the configured provider and maps its failures to sidecar errors."""

    def __init__(self, settings: UpstreamSettings, base_url: str, provider_key: Secret) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self._provider_key = provider_key
        self._auth = f"Bearer {provider_key}" if provider_key else ""
        self._session: aiohttp.ClientSession | None = None
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s,
        )

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections, limit_per_host=0, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def headers_for(self, client_headers: Mapping[str, str], request_id: str) -> dict[str, str]:
        """Headers sent upstream: the provider key, JSON, and a short allow-list from the client."""
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": _USER_AGENT,
            "X-Request-Id": request_id,
        }
        if self._auth:
            headers["Authorization"] = self._auth
        for name in _PASS_THROUGH:
            value = client_headers.get(name)
            if value is not None:
                headers[name] = value
        return headers

    @asynccontextmanager
    async def request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, asyncio.Timeout]]:
        """Open one upstream exchange under the whole-exchange deadline (`total_timeout_s`);
        connection failures and timeouts become 502/504. Yields the response and the deadline:
        a stream relay takes the deadline over (see `relay_stream`), so that it can end the
        stream with an error event instead of being cancelled mid-write."""
        assert self._session is not None, "Upstream.start() was not awaited"
        try:
            async with asyncio.timeout(self.settings.total_timeout_s) as deadline:
                async with self._session.request(
                    method, self.base_url + path, data=body, headers=headers,
                    allow_redirects=False,
                ) as response:
                    yield response, deadline
        except TimeoutError as exc:
            raise UpstreamTimeout() from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError() from exc

    async def read_limited(self, response: aiohttp.ClientResponse) -> bytes:
        """Read a whole non-streamed response, refusing one larger than the configured cap."""
        cap = self.settings.max_response_bytes
        if response.content_length is not None and response.content_length > cap:
            raise UpstreamError("The model provider's response was too large.")
        if response.content_length is not None and "Content-Encoding" not in response.headers:
            return await response.read()  # uncompressed: the declared length bounds the read
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise UpstreamError("The model provider's response was too large.")
            chunks.append(chunk)
        return b"".join(chunks)

    def scrub(self, text: str) -> str:
        """Remove the provider key and anything key-shaped from provider text we relay."""
        if self._provider_key and self._provider_key in text:
            text = text.replace(self._provider_key, "***")
        return _KEY_LIKE.sub("***", text)

    def client_error_body(self, raw: bytes, status: int, request_id: str) -> dict[str, Any]:
        """The provider's 4xx error object, scrubbed, with our request id; a generic one if unusable."""
        error: dict[str, Any] = {}
        try:
            parsed = orjson.loads(raw)
            if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
                error = parsed["error"]
        except orjson.JSONDecodeError:
            pass
        clean: dict[str, Any] = {}
        for field in ("message", "type", "param", "code"):
            value = error.get(field)
            if isinstance(value, str):
                clean[field] = self.scrub(value)[:2000]
            elif value is None or isinstance(value, int | float | bool):
                clean[field] = value
        clean.setdefault("message", f"The model provider refused the request (HTTP {status}).")
        clean.setdefault("type", "invalid_request_error")
        clean.setdefault("code", None)
        clean["request_id"] = request_id
        return {"error": clean}
