"""The admin API (admin listener): key management behind a bearer admin token.

The token is kept only as a SHA-256 digest in memory and compared in constant time. With no
token configured the admin listener does not start (the caller logs why).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from sidecar.appstate import AUTH, POLICIES
from sidecar.auth.keyformat import is_key_id
from sidecar.auth.records import TENANT_RE, KeyNotFound, KeyRequestError, parse_key_spec
from sidecar.errors import error_body
from sidecar.store.redis import StoreError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN_DIGEST = web.AppKey("token_digest", bytes)
PROXY = web.AppKey("proxy", web.Application)
MAX_ADMIN_BODY = 64 * 1024
# Query parameters each route takes; anything else is refused, not silently ignored.
_QUERY = {("GET", "/admin/keys"): frozenset({"tenant"})}


def _error(status: int, code: str, message: str) -> web.Response:
    type_ = "invalid_request_error" if status < 500 else "api_error"
    return web.Response(body=error_body(message, type_, code, ""), status=status,
                        content_type="application/json")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Token check for everything but the OpenAPI document; errors in the common JSON shape."""
    try:
        if request.path != "/admin/openapi.json":
            presented = request.headers.get("Authorization", "")
            scheme, _, token = presented.partition(" ")
            digest = hashlib.sha256(token.strip().encode()).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, request.app[TOKEN_DIGEST]):
                return _error(401, "invalid_admin_token", "A valid admin token is required.")
        allowed = _QUERY.get((request.method, request.path), frozenset())
        unknown = set(request.query) - allowed
        if unknown:
            raise KeyRequestError("query: unknown parameter (allowed: "
                                  f"{', '.join(sorted(allowed)) or 'none'})")
        return await handler(request)
    except KeyRequestError as exc:
        return _error(400, "invalid_request", str(exc))
    except KeyNotFound:
        return _error(404, "not_found", "No key with that id.")
    except StoreError:
        return _error(503, "store_unavailable", "The store is unavailable; try again shortly.")
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
    raw = await request.read()
    try:
        return orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise KeyRequestError("body: not valid JSON") from None


def _key_id(request: web.Request) -> str:
    key_id = request.match_info["key_id"]
    if not is_key_id(key_id):
        raise KeyNotFound(key_id)
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
    return _json({"key": raw_key, **record.public()}, status=201)


async def list_keys(request: web.Request) -> web.Response:
    tenant = request.query.get("tenant", "")
    if not TENANT_RE.fullmatch(tenant):
        raise KeyRequestError("tenant: query parameter required (1-64 characters of A-Z a-z 0-9 . _ -)")
    records = await request.app[PROXY][AUTH].records.list(tenant)
    return _json({"data": [r.public() for r in records]})


async def get_key(request: web.Request) -> web.Response:
    record = await request.app[PROXY][AUTH].records.get(_key_id(request))
    return _json(record.public())


async def patch_key(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    body = await _body(request)
    _known_policy(request, body)
    record = await request.app[PROXY][AUTH].records.update(key_id, body)
    request.app[PROXY][AUTH].invalidate(key_id)
    return _json(record.public())


async def revoke_key(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    record = await request.app[PROXY][AUTH].records.revoke(key_id)
    request.app[PROXY][AUTH].invalidate(key_id)
    return _json(record.public())


async def rotate_key(request: web.Request) -> web.Response:
    key_id = _key_id(request)
    body = await _body(request)
    if not isinstance(body, dict) or set(body) - {"grace_s"}:
        raise KeyRequestError("body: expected {\"grace_s\": <seconds>}")
    raw_key, new, old = await request.app[PROXY][AUTH].records.rotate(key_id, body.get("grace_s", 0))
    request.app[PROXY][AUTH].invalidate(key_id)
    return _json({"key": raw_key, **new.public(), "previous": old.public()}, status=201)


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


def create_admin_app(proxy_app: web.Application, token: str) -> web.Application:
    app = web.Application(middlewares=[admin_middleware], client_max_size=MAX_ADMIN_BODY)
    app[TOKEN_DIGEST] = hashlib.sha256(token.encode()).digest()
    app[PROXY] = proxy_app
    app.router.add_post("/admin/keys", create_key)
    app.router.add_get("/admin/keys", list_keys, allow_head=False)
    app.router.add_get("/admin/keys/{key_id}", get_key, allow_head=False)
    app.router.add_patch("/admin/keys/{key_id}", patch_key)
    app.router.add_post("/admin/keys/{key_id}/revoke", revoke_key)
    app.router.add_post("/admin/keys/{key_id}/rotate", rotate_key)
    app.router.add_get("/admin/openapi.json", openapi, allow_head=False)
    return app


_RULE = {
    "type": "object", "additionalProperties": False, "required": ["window_s"],
    "anyOf": [{"required": ["requests"]}, {"required": ["tokens"]}],
    "properties": {
        "window_s": {"type": "integer", "minimum": 1, "maximum": 2678400},
        "requests": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000},
        "tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000_000},
        "mode": {"type": "string", "enum": ["enforce", "shadow"]},
    },
}
_POLICY = {"type": "string", "pattern": "^([a-z0-9][a-z0-9_.-]{0,63})?$", "nullable": True,
           "description": "guard policy name (settings [policies.<name>]); empty = tenant's or default"}
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
           "404": _resp("No such key", _ERROR), "503": _resp("Store unavailable", _ERROR)}
_KEY_ID_PARAM = {"name": "key_id", "in": "path", "required": True,
                 "schema": {"type": "string", "pattern": "^[0-9A-Za-z]{12}$"}}
_KEY_LIST = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "array", "items": _KEY}}}
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
