"""The provider connection: one ClientSession per process, header hygiene, timeouts -> errors.

The upstream URL is fixed by configuration (never chosen by the client); headers are built
from scratch so the client's credentials, cookies and hop-by-hop headers never leave the pod;
redirects are not followed. Three kinds of provider differ only in where a route's path goes
and how the provider key is presented: OpenAI (`/v1/...`, `Authorization: Bearer`), Azure
OpenAI (`/openai/deployments/<deployment>/...?api-version=` or `/openai/v1/...`, `api-key`)
and Anthropic (`/v1/messages`, `x-api-key`, the client's `anthropic-version` and
`anthropic-beta` passed through).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import orjson

from sidecar import __version__
from sidecar.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from sidecar.settings import Secret, UpstreamSettings

OPENAI, AZURE, ANTHROPIC = "openai", "azure", "anthropic"
# Client headers worth passing to the provider, per kind; everything else is dropped.
_PASS_THROUGH = {OPENAI: ("openai-beta",), AZURE: ("openai-beta",),
                 ANTHROPIC: ("anthropic-version", "anthropic-beta")}
# Azure deployments path: the OpenAI routes that live under a deployment.
_DEPLOYMENT_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_DEPLOYMENT_NAME = re.compile(r"(?!\.\.?$)[A-Za-z0-9._-]{1,64}")
_USER_AGENT = f"ai-security-sidecar/{__version__}"

# Anything in a provider error message that looks like a credential is scrubbed.
_KEY_LIKE = re.compile(
    r"(?:sk|sks|rk|pk)[-_][A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9._\-]{6,}|AKIA[0-9A-Z]{16}"
    r"|\*{3,}[A-Za-z0-9]{2,}"
)


class Upstream:
    """Sends requests to the configured provider and maps its failures to sidecar errors."""

    def __init__(self, settings: UpstreamSettings, base_url: str, provider_key: Secret,
                 kind: str | None = None) -> None:
        self.settings = settings
        self.kind = kind or settings.kind
        self.base_url = base_url.rstrip("/")
        self._provider_key = provider_key
        self._auth_header = {AZURE: "api-key", ANTHROPIC: "x-api-key"}.get(self.kind, "Authorization")
        self._auth = ("" if not provider_key else
                      f"Bearer {provider_key}" if self.kind == OPENAI else str(provider_key))
        self._pass_through = _PASS_THROUGH[self.kind]
        self._deployments = dict(settings.deployments)
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
            headers[self._auth_header] = self._auth
        for name in self._pass_through:
            value = client_headers.get(name)
            if value is not None:
                headers[name] = value
        return headers

    def deployment(self, model: str) -> str:
        """Azure: the deployment that serves `model` (the settings' map, else the name itself);
        a name that cannot be one path segment is a 400, so no client can climb out of it."""
        name = self._deployments.get(model, model)
        if not _DEPLOYMENT_NAME.fullmatch(name):
            raise InvalidRequest("Field 'model' must name a deployment: 1-64 of A-Z a-z 0-9 . _ -")
        return name

    def path_for(self, path: str, model: str | None = None) -> str:
        """The provider's path (and query) for one of our `/v1/...` paths. Azure: chat,
        completions and embeddings go under their deployment; everything else under
        `/openai/`; the v1-style endpoint keeps the path under `/openai/v1/`."""
        if self.kind != AZURE:
            return path
        version = self.settings.api_version
        if self.settings.azure_endpoint == "v1":
            target = "/openai" + path
        elif path in _DEPLOYMENT_ROUTES and model is not None:
            target = f"/openai/deployments/{quote(self.deployment(model), safe='')}" + path[3:]
        else:
            target = "/openai" + path[3:]
        return target + ("?" + urlencode({"api-version": version}) if version else "")

    def body_model(self, model: str) -> str:
        """The `model` the provider should read in the body: Azure's v1-style and Responses
        endpoints take the deployment name there; everyone else the client's name."""
        return self.deployment(model) if self.kind == AZURE else model

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
