"""Key records in Redis: create, read, list, change, revoke, rotate.

`sk:{t:<tenant>}:<key_id>` is a hash with the argon2id hash and everything about the key;
`keyidx:<key_id>` names the tenant of a key id (a presented key carries only its id);
`tenant:{t:<tenant>}:keys` is the set of a tenant's key ids. The raw key is returned once,
by create and rotate, and stored nowhere. Changes are announced on a pub/sub channel so every
sidecar drops its cached copy at once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.auth.hashing import SecretHasher
from sidecar.auth.keyformat import make_key, new_key_id, parse_key
from sidecar.auth.models import ModelListError, parse_models
from sidecar.errors import ConfigError
from sidecar.model import LimitRule
from sidecar.settings import parse_limit_rule
from sidecar.store.redis import Store

# A scope per API: a key reaches only the APIs it was given (a key made before the Responses
# and Messages routes existed does not silently gain them; Anthropic is another provider's bill).
SCOPES = frozenset({"chat", "completions", "embeddings", "models", "conversations", "responses",
                    "messages"})
EVENTS_CHANNEL = "sidecar:key-events"
TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
POLICY_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_EXPIRY_S = 10 * 365 * 86400
MAX_GRACE_S = 30 * 86400
# Expired keys stay listable for a week, then Redis drops the record.
EXPIRED_RETENTION_S = 7 * 86400


class KeyRequestError(ValueError):
    """An admin or CLI request for a key that is not valid; the message names the field."""


class KeyNotFound(LookupError):
    """No key with that id."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """What a caller asks for when creating a key (validated)."""

    tenant: str
    scopes: frozenset[str]
    limits: tuple[LimitRule, ...] = ()
    expires_in_s: int | None = None
    label: str = ""
    policy: str = ""  # guard policy name ("" = the tenant's, else the default)
    models: tuple[str, ...] = ()  # allowed model names or glob patterns (empty: every model)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key as stored, without its hash."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    status: str
    created_at: float
    expires_at: float | None
    limits: tuple[LimitRule, ...]
    label: str
    lineage: str
    last_used_at: float | None = None
    rotated_to: str = ""
    policy: str = ""
    models: tuple[str, ...] = ()
    secret_hash: str = field(default="", repr=False)

    def state(self, now: float) -> str:
        """active, revoked or expired (as of `now`)."""
        if self.status == "revoked":
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "key_id": self.key_id, "tenant": self.tenant, "scopes": sorted(self.scopes),
            "status": self.state(now), "created_at": self.created_at,
            "expires_at": self.expires_at, "last_used_at": self.last_used_at,
            "limits": [rule_dict(r) for r in self.limits], "label": self.label,
            "lineage": self.lineage, "rotated_to": self.rotated_to or None,
            "policy": self.policy or None, "models": list(self.models),
        }


def rule_dict(rule: LimitRule) -> dict[str, Any]:
    out: dict[str, Any] = {"window_s": rule.window_s}
    if rule.requests is not None:
        out["requests"] = rule.requests
    if rule.tokens is not None:
        out["tokens"] = rule.tokens
    if rule.cost_usd is not None:
        out["cost_usd"] = rule.cost_usd
    if rule.mode != "enforce":
        out["mode"] = rule.mode
    return out


def _int_field(body: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise KeyRequestError(f"{name}: expected a whole number from {low} to {high}")
    return value


def parse_scopes(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise KeyRequestError(f"scopes: expected a non-empty list of {', '.join(sorted(SCOPES))}")
    if len(set(value)) != len(value):
        raise KeyRequestError("scopes: each scope may appear once")
    unknown = set(value) - SCOPES
    if unknown:
        raise KeyRequestError(f"scopes: unknown scope {sorted(unknown)[0]!r}")
    return frozenset(value)


def parse_limits(value: Any) -> tuple[LimitRule, ...]:
    if not isinstance(value, list) or len(value) > 16:
        raise KeyRequestError("limits: expected a list of at most 16 rules")
    try:
        return tuple(parse_limit_rule(f"limits[{i}]", item) for i, item in enumerate(value))
    except ConfigError as exc:
        raise KeyRequestError(str(exc)) from None


def parse_label(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise KeyRequestError("label: expected a string of at most 200 characters")
    return value


def parse_policy(value: Any) -> str:
    """A guard policy name (the admin API also checks that it is configured)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not POLICY_RE.fullmatch(value):
        raise KeyRequestError("policy: expected a policy name (1-64 of a-z 0-9 _ . -)")
    return value


def parse_model_list(value: Any) -> tuple[str, ...]:
    try:
        return parse_models(value)
    except ModelListError as exc:
        raise KeyRequestError(str(exc)) from None


def parse_key_spec(body: Any) -> KeySpec:
    """Validate a create request: {"tenant", "scopes", "limits"?, "expires_in_s"?, "label"?}."""
    if not isinstance(body, dict):
        raise KeyRequestError("body: expected a JSON object")
    unknown = set(body) - {"tenant", "scopes", "limits", "expires_in_s", "label", "policy",
                           "models"}
    if unknown:
        raise KeyRequestError(f"{sorted(unknown)[0]}: unknown field")
    tenant = body.get("tenant")
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise KeyRequestError("tenant: expected 1-64 characters of A-Z a-z 0-9 . _ -")
    return KeySpec(
        tenant=tenant,
        scopes=parse_scopes(body.get("scopes")),
        limits=parse_limits(body.get("limits", [])),
        expires_in_s=_int_field(body, "expires_in_s", 1, MAX_EXPIRY_S),
        label=parse_label(body.get("label", "")),
        policy=parse_policy(body.get("policy")),
        models=parse_model_list(body.get("models")),
    )


def record_key(tenant: str, key_id: str) -> str:
    return f"sk:{{t:{tenant}}}:{key_id}"


def index_key(key_id: str) -> str:
    return f"keyidx:{key_id}"


def tenant_keys(tenant: str) -> str:
    return f"tenant:{{t:{tenant}}}:keys"


def _text(raw: dict[bytes, bytes], name: str) -> str:
    return raw.get(name.encode(), b"").decode()


def _float(raw: dict[bytes, bytes], name: str) -> float | None:
    text = _text(raw, name)
    return float(text) if text else None


def decode_record(key_id: str, raw: dict[bytes, bytes]) -> KeyRecord:
    limits = orjson.loads(raw.get(b"limits", b"[]"))
    return KeyRecord(
        key_id=key_id,
        tenant=_text(raw, "tenant"),
        scopes=frozenset(filter(None, _text(raw, "scopes").split(","))),
        status=_text(raw, "status") or "active",
        created_at=_float(raw, "created_at") or 0.0,
        expires_at=_float(raw, "expires_at"),
        limits=tuple(parse_limit_rule("limits", item) for item in limits),
        label=_text(raw, "label"),
        lineage=_text(raw, "lineage") or key_id,
        last_used_at=_float(raw, "last_used_at"),
        rotated_to=_text(raw, "rotated_to"),
        policy=_text(raw, "policy"),
        models=tuple(orjson.loads(raw.get(b"models") or b"[]")),
        secret_hash=_text(raw, "hash"),
    )


class KeyRecords:
    """Key records in the store; every method is an admin-path operation (not the hot path)."""

    def __init__(self, store: Store, hasher: SecretHasher) -> None:
        self.store = store
        self.hasher = hasher

    async def _claim_id(self, tenant: str) -> str:
        for _ in range(8):
            key_id = new_key_id()
            if await self.store.call("set", index_key(key_id), tenant, None, None, True):
                return key_id
        raise RuntimeError("could not find a free key id")  # 62**12 ids: practically unreachable

    async def create(self, spec: KeySpec, *, lineage: str = "") -> tuple[str, KeyRecord]:
        """Store a new key; returns (raw key, record). The raw key exists only in the return value."""
        key_id = await self._claim_id(spec.tenant)
        raw_key = make_key(key_id)
        parsed = parse_key(raw_key)
        assert parsed is not None
        secret_hash = await self.hasher.hash(parsed.secret)
        now = time.time()
        expires_at = now + spec.expires_in_s if spec.expires_in_s else None
        fields = {
            "hash": secret_hash, "tenant": spec.tenant, "scopes": ",".join(sorted(spec.scopes)),
            "status": "active", "created_at": repr(now),
            "expires_at": repr(expires_at) if expires_at else "",
            "limits": orjson.dumps([rule_dict(r) for r in spec.limits]).decode(),
            "label": spec.label, "lineage": lineage or key_id, "policy": spec.policy,
            "models": orjson.dumps(list(spec.models)).decode(),
        }
        rkey = record_key(spec.tenant, key_id)
        await self.store.call("hset", rkey, None, None, fields)
        await self.store.call("sadd", tenant_keys(spec.tenant), key_id)
        if expires_at:
            await self._expire_with(spec.tenant, key_id, expires_at)
        record = decode_record(key_id, {k.encode(): str(v).encode() for k, v in fields.items()})
        return raw_key, record

    async def _expire_with(self, tenant: str, key_id: str, expires_at: float) -> None:
        at = int(expires_at + EXPIRED_RETENTION_S)
        await self.store.call("expireat", record_key(tenant, key_id), at)
        await self.store.call("expireat", index_key(key_id), at)

    async def tenant_of(self, key_id: str) -> str | None:
        tenant = await self.store.call("get", index_key(key_id))
        return tenant.decode() if tenant else None

    async def get(self, key_id: str) -> KeyRecord:
        tenant = await self.tenant_of(key_id)
        if tenant is None:
            raise KeyNotFound(key_id)
        raw = await self.store.call("hgetall", record_key(tenant, key_id))
        if not raw:
            raise KeyNotFound(key_id)
        return decode_record(key_id, raw)

    async def list(self, tenant: str) -> list[KeyRecord]:
        ids = sorted(m.decode() for m in await self.store.call("smembers", tenant_keys(tenant)))
        records = []
        for key_id in ids:
            raw = await self.store.call("hgetall", record_key(tenant, key_id))
            if raw:
                records.append(decode_record(key_id, raw))
        return records

    async def tenants(self) -> tuple[str, ...]:
        """Every tenant that has keys (a keyspace scan: for the CLI, not the request path)."""
        head, tail = tenant_keys("\0").split("\0")
        found = (k.decode() for k in await self.store.keys_matching(head + "*" + tail))
        return tuple(sorted(k[len(head):-len(tail)] for k in found
                            if k.startswith(head) and k.endswith(tail)))

    async def _announce(self, key_id: str) -> None:
        await self.store.call("publish", EVENTS_CHANNEL, key_id)

    async def update(self, key_id: str, body: Any) -> KeyRecord:
        """PATCH: label, scopes, limits, policy, models, expires_in_s (from now)."""
        if not isinstance(body, dict):
            raise KeyRequestError("body: expected a JSON object")
        unknown = set(body) - {"label", "scopes", "limits", "expires_in_s", "policy", "models"}
        if unknown:
            raise KeyRequestError(f"{sorted(unknown)[0]}: unknown field")
        record = await self.get(key_id)
        fields: dict[str, str] = {}
        if "label" in body:
            fields["label"] = parse_label(body["label"])
        if "policy" in body:
            fields["policy"] = parse_policy(body["policy"])
        if "models" in body:
            fields["models"] = orjson.dumps(list(parse_model_list(body["models"]))).decode()
        if "scopes" in body:
            fields["scopes"] = ",".join(sorted(parse_scopes(body["scopes"])))
        if "limits" in body:
            fields["limits"] = orjson.dumps([rule_dict(r) for r in parse_limits(body["limits"])]).decode()
        expires_in = _int_field(body, "expires_in_s", 1, MAX_EXPIRY_S)
        if expires_in is not None:
            fields["expires_at"] = repr(time.time() + expires_in)
        if fields:
            await self.store.call("hset", record_key(record.tenant, key_id), None, None, fields)
            if expires_in is not None:
                await self._expire_with(record.tenant, key_id, time.time() + expires_in)
            await self._announce(key_id)
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> KeyRecord:
        record = await self.get(key_id)
        await self.store.call("hset", record_key(record.tenant, key_id), None, None,
                              {"status": "revoked", "revoked_at": repr(time.time())})
        await self._announce(key_id)
        return await self.get(key_id)

    async def rotate(self, key_id: str, grace_s: int) -> tuple[str, KeyRecord, KeyRecord]:
        """A new key with the same tenant, scopes, limits and usage windows; the old one keeps
        working for `grace_s` seconds. Returns (new raw key, new record, old record)."""
        if isinstance(grace_s, bool) or not isinstance(grace_s, int) or not 0 <= grace_s <= MAX_GRACE_S:
            raise KeyRequestError(f"grace_s: expected a whole number from 0 to {MAX_GRACE_S}")
        old = await self.get(key_id)
        if old.state(time.time()) != "active":
            raise KeyRequestError("key: only an active key can be rotated")
        spec = KeySpec(tenant=old.tenant, scopes=old.scopes, limits=old.limits, label=old.label,
                       policy=old.policy, models=old.models,
                       expires_in_s=int(old.expires_at - time.time()) if old.expires_at else None)
        raw_key, new = await self.create(spec, lineage=old.lineage)
        grace_end = time.time() + grace_s
        expires_at = min(grace_end, old.expires_at) if old.expires_at else grace_end
        await self.store.call("hset", record_key(old.tenant, key_id), None, None,
                              {"expires_at": repr(expires_at), "rotated_to": new.key_id})
        await self._expire_with(old.tenant, key_id, expires_at)
        await self._announce(key_id)
        return raw_key, new, await self.get(key_id)

    async def touch(self, record: KeyRecord) -> None:
        """Record last use (on verification, i.e. once per cache lifetime, not per request)."""
        await self.store.call("hset", record_key(record.tenant, record.key_id), "last_used_at",
                              repr(time.time()))
