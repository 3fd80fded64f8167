"""The admin API (admin listener): key management and usage reports behind a bearer admin token.

The token is kept only as a SHA-256 digest in memory and compared in constant time; settings
refuse a weak one at start. With no token configured the admin listener does not start (the
caller logs why). Wrong tokens are counted per client address: after five in a minute each
answer is delayed, and past `admin.failures_per_minute` the address gets 429 until its minute
is over. Every action (and every refused token) is one JSON line on the `sidecar.audit` logger.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web

from sidecar.appstate import AUTH, POLICIES, SETTINGS, USAGE
from sidecar.auth.failures import FailureWindow
from sidecar.auth.keyformat import is_key_id
from sidecar.auth.records import TENANT_RE, KeyNotFound, KeyRequestError, parse_key_spec
from sidecar.errors import error_body
from sidecar.log import log_fields
from sidecar.store.redis import StoreError
from sidecar.usage import GROUPS, UsageRow

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_DIGEST = web.AppKey("token_digest", bytes)
TOKEN_FINGERPRINT = web.AppKey("token_fingerprint", str)
FAILURES = web.AppKey("admin_failures", FailureWindow)
FAILURE_DELAY = web.AppKey("admin_failure_delay_s", float)
AUDIT = web.RequestKey("admin_audit", dict[str, str])
SLOW_AFTER = 5  # wrong tokens per address and minute answered at once; later ones wait
audit_log = logging.getLogger("sidecar.audit")
PROXY = web.AppKey("proxy", web.Application)
MAX_ADMIN_BODY = 64 * 1024
SERVER_NAME = "ai-security-sidecar"  # never aiohttp's "Python/3.x aiohttp/3.y"
# Query parameters each route takes; anything else is refused, not silently ignored.
_QUERY = {("GET", "/admin/keys"): frozenset({"tenant"}),
          ("GET", "/admin/usage"): frozenset({"tenant", "key_id", "from", "to", "group_by"})}


def _error(status: int, code: str, message: str) -> web.Response:
    type_ = "invalid_request_error" if status < 500 else "api_error"
    return web.Response(body=error_body(message, type_, code, ""), status=status,
                        content_type="application/json")


def token_fingerprint(token: str) -> str:
    """Names the admin token in audit lines (which token acted, across a rotation) without
    revealing it: 48 bits of a labelled SHA-256 of a token of at least 32 characters."""
    return hashlib.sha256(b"sidecar-admin-token\x00" + token.encode()).hexdigest()[:12]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token check (with the guesser's slow-down and 429) for everything but the OpenAPI
    document, one audit line per action, errors in the common JSON shape."""
    if request.path == "/admin/openapi.json":
        return await _dispatch(request, handler)
    refusal = await _check_token(request)
    if refusal is not None:
        return refusal
    request[AUDIT] = {}
    response = await _dispatch(request, handler)
    route = request.match_info.route.name
    _audit(request, route or "admin.unknown_url", response.status,
           admin=request.app[TOKEN_FINGERPRINT], **request[AUDIT])
    return response


async def _check_token(request: web.Request) -> web.Response | None:
    """None for the right bearer token; else a 401 (slowed down after the address's first
    SLOW_AFTER failures in a minute) or, past its budget, a 429 for every request from that
    address, the right token included, so the answer tells a guesser nothing. Counting and
    checking happen with no await in between: concurrent guesses cannot slip past the budget."""
    failures = request.app[FAILURES]
    client = request.remote or "unknown"
    now = time.monotonic()
    if failures.over(client, now):
        response = _error(429, "too_many_admin_failures",
                          "Too many wrong admin tokens from this address; try again later.")
        response.headers["Retry-After"] = str(max(1, math.ceil(failures.retry_after(client, now))))
        return response
    presented = request.headers.get("Authorization", "")
    scheme, _, token = presented.partition(" ")
    digest = hashlib.sha256(token.strip().encode()).digest()
    if scheme.lower() == "bearer" and hmac.compare_digest(digest, request.app[TOKEN_DIGEST]):
        return None
    count = failures.add(client, now)
    _audit(request, "admin.denied" if count < failures.limit else "admin.locked", 401)
    if count > SLOW_AFTER:
        await asyncio.sleep(request.app[FAILURE_DELAY])
    return _error(401, "invalid_admin_token", "A valid admin token is required.")


def _audit(request: web.Request, action: str, status: int, **fields: Any) -> None:
    """One JSON line on the `sidecar.audit` logger: who (client address, fingerprint of the
    admin token used), what, on which key and tenant. Never a raw key or the token."""
    log_fields(audit_log, logging.INFO, "admin action", action=action, status=status,
               client=request.remote, method=request.method, **fields)


async def _dispatch(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        allowed = _QUERY.get((request.method, request.path), frozenset())
        unknown = set(request.query) - allowed
        if unknown and request.match_info.http_exception is None:  # a 405/404 says more
            raise KeyRequestError("query: unknown parameter (allowed: "
                                  f"{', '.join(sorted(allowed)) or 'none'})")
        return await handler(request)
    except KeyRequestError as exc:
        return _error(400, "invalid_request", str(exc))
    except KeyNotFound:
        return _error(404, "not_found", "No key with that id.")
    except StoreError:
        return _error(503, "store_unavailable", "The store is unavailable; try again shortly.")
    except TimeoutError:
        return _error(408, "request_timeout", "The request body did not arrive in time.")
    except web.HTTPException as exc:
        if exc.status == 405:
            response = _error(405, "method_not_allowed", "This method is not allowed on this URL.")
            response.headers["Allow"] = exc.headers.get("Allow", "")
            return response
        if exc.status == 413:
            return _error(413, "body_too_large", "The request body is too large.")
        return _error(exc.status if exc.status >= 400 else 404, "not_found", "Unknown URL.")


async def _body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise KeyRequestError("body: expected Content-Type application/json")
    async with asyncio.timeout(request.app[PROXY][SETTINGS].body_timeout_s):  # as the proxy's
        raw = await request.read()
    try:
        return orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise KeyRequestError("body: not valid JSON") from None


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["key_id"]
    if not is_key_id(key_id):
        raise KeyNotFound(key_id)
    request[AUDIT]["key_id"] = key_id
    return key_id


def _known_policy(request: web.Request, body: Any) -> None:
    """A key may only name a policy this sidecar's settings define."""
    name = body.get("policy") if isinstance(body, dict) else None
    if isinstance(name, str) and name and name not in request.app[PROXY][POLICIES].by_name:
        known = ", ".join(sorted(request.app[PROXY][POLICIES].by_name))
        raise KeyRequestError(f"policy: unknown policy (configured: {known})")


async def create_key(request: web.Request) -> web.Response:
    body = await _body(request)
    _known_policy(request, body)
    spec = parse_key_spec(body)
    raw_key, record = await request.app[PROXY][AUTH].records.create(spec)
    request[AUDIT].update(key_id=record.key_id, tenant=record.tenant)
    return _json({"key": raw_key, **record.public()}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant", "")
    if not TENANT_RE.fullmatch(tenant):
        raise KeyRequestError("tenant: query parameter required (1-64 characters of A-Z a-z 0-9 . _ -)")
    request[AUDIT].update(tenant=tenant)
    records = await request.app[PROXY][AUTH].records.list(tenant)
    return _json({"data": [r.public() for r in records]})


async def get_key(request: web.Request) -> web.Response:
    record = await request.app[PROXY][AUTH].records.get(_key_id(request))
    request[AUDIT].update(key_id=record.key_id, tenant=record.tenant)
    return _json(record.public())


async def patch_key(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    body = await _body(request)
    _known_policy(request, body)
    record = await request.app[PROXY][AUTH].records.update(key_id, body)
    request.app[PROXY][AUTH].invalidate(key_id)
    request[AUDIT].update(key_id=record.key_id, tenant=record.tenant)
    return _json(record.public())


async def revoke_key(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    record = await request.app[PROXY][AUTH].records.revoke(key_id)
    request.app[PROXY][AUTH].invalidate(key_id)
    request[AUDIT].update(key_id=record.key_id, tenant=record.tenant)
    return _json(record.public())


async def rotate_key(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    body = await _body(request)
    if not isinstance(body, dict) or set(body) - {"grace_s"}:
        raise KeyRequestError("body: expected {\"grace_s\": <seconds>}")
    raw_key, new, old = await request.app[PROXY][AUTH].records.rotate(key_id, body.get("grace_s", 0))
    request.app[PROXY][AUTH].invalidate(key_id)
    request[AUDIT].update(key_id=new.key_id, tenant=new.tenant, previous_key_id=old.key_id)
    return _json({"key": raw_key, **new.public(), "previous": old.public()}, status=201)


_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                      r"(?:\.[0-9]+)?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))")


def _instant(name: str, text: str) -> int:
    """Unix seconds from whole seconds or an RFC 3339 time (a leap second counts as :59)."""
    if text.isdigit() and len(text) <= 12:
        return int(text)
    match = _RFC3339.fullmatch(text)
    try:
        if match is None:
            raise ValueError(text)
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        sign, off_h, off_m = match.groups()[6:]
        offset = timedelta(hours=int(off_h or 0), minutes=int(off_m or 0)) * (-1 if sign == "-" else 1)
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=timezone(offset))
        return int(moment.timestamp())
    except (ValueError, OverflowError):
        raise KeyRequestError(f"{name}: expected Unix seconds or an RFC 3339 time such as "
                              "2026-12-01T00:00:00Z") from None


async def usage_report(request: web.Request) -> web.Response:
    """GET /admin/usage: a tenant's reported usage and cost over whole hours, grouped. A range
    longer than the retention is cut to it (nothing older is kept); an empty range is empty."""
    query = request.query
    tenant = query.get("tenant", "")
    if not TENANT_RE.fullmatch(tenant):
        raise KeyRequestError("tenant: query parameter required (1-64 characters of A-Z a-z 0-9 . _ -)")
    key_id = query.get("key_id") or None
    if key_id is not None and not is_key_id(key_id):
        raise KeyRequestError("key_id: not a key id")
    group_by = tuple(dict.fromkeys(g for g in query.get("group_by", "model").split(",") if g))
    if set(group_by) - set(GROUPS):
        raise KeyRequestError(f"group_by: a comma-separated list of {', '.join(GROUPS)}")
    usage = request.app[PROXY][USAGE]
    end = _instant("to", query["to"]) if "to" in query else int(time.time())
    start = _instant("from", query["from"]) if "from" in query else end - 86400
    last_hour = (end - 1) // 3600
    first_hour = max(start // 3600, last_hour - usage.settings.retention_days * 24)
    data: list[dict[str, Any]] = []
    total = UsageRow().public()
    if first_hour <= last_hour:
        data, total = await usage.report(tenant, first_hour, last_hour, key_id, group_by)
    return _json({"object": "usage_report", "tenant": tenant, "key_id": key_id,
                  "from": first_hour * 3600, "to": max(first_hour, last_hour + 1) * 3600,
                  "group_by": list(group_by), "data": data, "total": total})


async def openapi(request: web.Request) -> web.Response:
    """The document, with the policy names this sidecar's settings define as an enum."""
    names = ["", *sorted(request.app[PROXY][POLICIES].by_name), None]
    policy = {**_POLICY, "enum": names}
    doc = orjson.loads(orjson.dumps(OPENAPI))
    for path, method in (("/admin/keys", "post"), ("/admin/keys/{key_id}", "patch")):
        body = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["policy"] = policy
    return _json(doc)


async def _hide_server_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


def create_admin_app(proxy_app: web.Application, token: str) -> web.Application:
    app = web.Application(middlewares=[admin_middleware], client_max_size=MAX_ADMIN_BODY)
    app.on_response_prepare.append(_hide_server_version)
    app[TOKEN_DIGEST] = hashlib.sha256(token.encode()).digest()
    app[TOKEN_FINGERPRINT] = token_fingerprint(token)
    admin = proxy_app[SETTINGS].admin
    app[FAILURES] = FailureWindow(admin.failures_per_minute, size=10_000)
    app[FAILURE_DELAY] = admin.failure_delay_s
    app[PROXY] = proxy_app
    # Route names are the audit log's actions.
    app.router.add_post("/admin/keys", create_key, name="key.create")
    app.router.add_get("/admin/keys", list_keys, allow_head=False, name="key.list")
    app.router.add_get("/admin/keys/{key_id}", get_key, allow_head=False, name="key.show")
    app.router.add_patch("/admin/keys/{key_id}", patch_key, name="key.update")
    app.router.add_post("/admin/keys/{key_id}/revoke", revoke_key, name="key.revoke")
    app.router.add_post("/admin/keys/{key_id}/rotate", rotate_key, name="key.rotate")
    app.router.add_get("/admin/usage", usage_report, allow_head=False, name="usage.report")
    app.router.add_get("/admin/openapi.json", openapi, allow_head=False)
    return app


_RULE = {
    "type": "object", "additionalProperties": False, "required": ["window_s"],
    "anyOf": [{"required": ["requests"]}, {"required": ["tokens"]}, {"required": ["cost_usd"]}],
    "properties": {
        "window_s": {"type": "integer", "minimum": 1, "maximum": 2678400},
        "requests": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000},
        "tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000},
        "cost_usd": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1_000_000},
        "mode": {"type": "string", "enum": ["enforce", "shadow"]},
    },
}
_POLICY = {"type": "string", "nullable": True, "enum": ["", "default", None],
           "description": "guard policy name (settings [policies.<name>]); empty = the tenant's "
                          "or the default; the served document lists the configured names"}
_SCOPES = {"type": "array", "minItems": 1, "uniqueItems": True,
           "items": {"type": "string", "enum": ["chat", "completions", "embeddings", "models",
                                                "conversations", "responses", "messages"]}}
_MODELS = {"type": "array", "maxItems": 64, "uniqueItems": True, "nullable": True,
           "description": "model names or glob patterns the key may call; empty or null = every model",
           "items": {"type": "string", "pattern": "^[A-Za-z0-9._:/@*?\\[\\]-]{1,128}$"}}
_KEY = {
    "type": "object",
    "required": ["key_id", "tenant", "scopes", "status", "created_at", "limits", "label"],
    "properties": {
        "key_id": {"type": "string"}, "tenant": {"type": "string"},
        "scopes": {"type": "array", "items": {"type": "string"}},
        "status": {"type": "string", "enum": ["active", "revoked", "expired"]},
        "created_at": {"type": "number"}, "expires_at": {"type": ["number", "null"]},
        "last_used_at": {"type": ["number", "null"]},
        "limits": {"type": "array", "items": {"type": "object"}}, "label": {"type": "string"},
        "lineage": {"type": "string"}, "rotated_to": {"type": ["string", "null"]},
        "policy": {"type": ["string", "null"]},
        "models": {"type": "array", "items": {"type": "string"}},
    },
}
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "code": {"type": "string"}, "request_id": {"type": "string"}}}}}


def _resp(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {"400": _resp("Invalid request", _ERROR), "401": _resp("Missing or wrong admin token", _ERROR),
           "404": _resp("No such key", _ERROR),
           "408": _resp("The request body did not arrive within body_timeout_s", _ERROR),
           "429": _resp("Too many wrong admin tokens from this address (see Retry-After)", _ERROR),
           "503": _resp("Store unavailable", _ERROR)}
_KEY_ID_PARAM = {"name": "key_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{12}$"}}
_KEY_LIST = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "array", "items": _KEY}}}
_USAGE_ROW = {"type": "object",
              "required": ["requests", "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"],
              "properties": {"model": {"type": "string"}, "key_id": {"type": "string"},
                             "hour": {"type": "integer"}, "requests": {"type": "integer"},
                             "prompt_tokens": {"type": "integer"},
                             "completion_tokens": {"type": "integer"},
                             "total_tokens": {"type": "integer"}, "cost_usd": {"type": "number"}}}
_USAGE = {"type": "object", "required": ["object", "tenant", "from", "to", "group_by", "data", "total"],
          "properties": {"object": {"type": "string", "enum": ["usage_report"]},
                         "tenant": {"type": "string"}, "key_id": {"type": "string", "nullable": True},
                         "from": {"type": "integer"}, "to": {"type": "integer"},
                         "group_by": {"type": "array", "items": {"type": "string", "enum": list(GROUPS)}},
                         "data": {"type": "array", "items": _USAGE_ROW}, "total": _USAGE_ROW}}
_INSTANT = {"anyOf": [{"type": "string", "pattern": "^[0-9]{1,12}$"},
                      {"type": "string", "format": "date-time"}]}
_CREATED = {"allOf": [_KEY, {"type": "object", "required": ["key"],
                             "properties": {"key": {"type": "string"}}}]}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "ai-security-sidecar admin API", "version": "1"},
    "components": {"securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
    "security": [{"admin": []}],
    "paths": {
        "/admin/keys": {
            "post": {
                "summary": "Create a key (the only time the raw key is shown)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False, "required": ["tenant", "scopes"],
                    "properties": {
                        "tenant": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                        "scopes": _SCOPES, "limits": {"type": "array", "maxItems": 16, "items": _RULE},
                        "expires_in_s": {"type": "integer", "minimum": 1, "maximum": 315360000,
                                         "nullable": True},
                        "label": {"type": "string", "maxLength": 200}, "policy": _POLICY,
                        "models": _MODELS}}}}},
                "responses": {"201": _resp("Created", _CREATED), **_ERRORS},
            },
            "get": {
                "summary": "List a tenant's keys",
                "parameters": [{"name": "tenant", "in": "query", "required": True,
                                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}}],
                "responses": {"200": _resp("Keys", _KEY_LIST), **_ERRORS},
            },
        },
        "/admin/usage": {
            "get": {
                "summary": "A tenant's usage and cost as the provider reported it, over whole hours",
                "parameters": [
                    {"name": "tenant", "in": "query", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
                    {"name": "key_id", "in": "query", "required": False,
                     "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{12}$"}},
                    {"name": "from", "in": "query", "required": False,
                     "description": "Unix seconds or RFC 3339; default: to minus one day",
                     "schema": _INSTANT},
                    {"name": "to", "in": "query", "required": False,
                     "description": "Unix seconds or RFC 3339; default: now",
                     "schema": _INSTANT},
                    {"name": "group_by", "in": "query", "required": False,
                     "description": "comma-separated: model, key_id, hour (default model)",
                     "schema": {"type": "string",
                                "pattern": "^((model|key_id|hour)(,(model|key_id|hour))*)?$"}}],
                "responses": {"200": _resp("Usage report", _USAGE), **_ERRORS},
            },
        },
        "/admin/keys/{key_id}": {
            "parameters": [_KEY_ID_PARAM],
            "get": {"summary": "Show a key", "responses": {"200": _resp("Key", _KEY), **_ERRORS}},
            "patch": {
                "summary": "Change label, scopes, limits, guard policy, models or expiry",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"label": {"type": "string", "maxLength": 200}, "scopes": _SCOPES,
                                   "policy": _POLICY, "models": _MODELS,
                                   "limits": {"type": "array", "maxItems": 16, "items": _RULE},
                                   "expires_in_s": {"type": "integer", "minimum": 1,
                                                    "maximum": 315360000, "nullable": True}}}}}},
                "responses": {"200": _resp("Key", _KEY), **_ERRORS},
            },
        },
        "/admin/keys/{key_id}/revoke": {
            "parameters": [_KEY_ID_PARAM],
            "post": {"summary": "Revoke a key (every sidecar refuses it within a second)",
                     "responses": {"200": _resp("Key", _KEY), **_ERRORS}},
        },
        "/admin/keys/{key_id}/rotate": {
            "parameters": [_KEY_ID_PARAM],
            "post": {
                "summary": "Issue a new key; the old one stays valid for grace_s seconds",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"grace_s": {"type": "integer", "minimum": 0, "maximum": 2592000}}}}}},
                "responses": {"201": _resp("Rotated", _CREATED), **_ERRORS},
            },
        },
    },
}
