"""Limit policies: which windows apply to a principal, and the Redis keys they live in.

A principal's own rules (from its key record) replace the settings' key rules; tenant
rules always apply. Each rule becomes one check per kind (requests, tokens, cost). Key-level
windows hang off `principal.limit_id`, so rotated keys share their usage.

Keys follow DESIGN.md section 4, every one carrying the tenant's hash tag so an admission
touches one Cluster slot:

    rl:{t:<tenant>}:<scope>:<window_s>        request log (zset: request id -> ms)
    rl:{t:<tenant>}:<scope>:<window_s>:cnt    request counts above COUNTER_ABOVE per window (hash:
                                              time bucket -> "requests:last ms", "" -> sum)
    tq:{t:<tenant>}:<scope>:<window_s>        token reservations (zset: request id -> ms)
    tq:{t:<tenant>}:<scope>:<window_s>:amt    their amounts (hash: request id -> tokens, "" -> sum)
    cq:{t:<tenant>}:<scope>:<window_s>        cost reservations (zset), as tq: but in nano-dollars
    cq:{t:<tenant>}:<scope>:<window_s>:amt    their amounts (hash: request id -> nano-dollars)

`<scope>` is `k:<limit_id>` or `tenant`; shadow rules get a `:shadow` suffix so they keep a
log of their own. Tenant and ids are percent-encoded outside `[A-Za-z0-9._~-]`, so no
caller text can close the hash tag or make two (tenant, id) pairs share a key.

A request log costs ~120 B per admitted request, so a request limit above `COUNTER_ABOVE` per
window is counted in at most ~101 time buckets instead (docs/limits.md): a bucket is counted
until its *last* request leaves the window, so the count never misses a request of the window
(never over-admits) and, under saturation, at least 100/101 of the limit is admitted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

from sidecar.model import LimitRule, Principal
from sidecar.settings import LimitsSettings
from sidecar.store.pipelined import Packed

Kind = Literal["requests", "tokens", "cost"]
NANO = 1_000_000_000  # cost windows count nano-dollars
Level = Literal["key", "tenant"]

COUNTER_ABOVE = 1000  # request limits above this per window are bucketed counters, not a log


def encode_part(text: str) -> str:
    """Injective, hash-tag-safe encoding of a tenant or id (identity for [A-Za-z0-9._~-])."""
    return quote(text, safe="")


@dataclass(frozen=True, slots=True)
class Check:
    """One window to check: `limit` requests or tokens per `window_s`, at key or tenant level."""

    kind: Kind
    level: Level
    window_s: int
    limit: int
    shadow: bool
    keys: tuple[str, ...]  # requests: (log,) or (counts,); tokens, cost: (reservations, amounts)
    bucketed: bool = False  # requests counted in time buckets (limit above COUNTER_ABOVE)

    @property
    def label(self) -> str:
        """Bounded, human-readable name, e.g. `key:requests:60s` (for shadow counts and logs)."""
        return f"{self.level}:{self.kind}:{self.window_s}s"


@dataclass(frozen=True, slots=True)
class Plan:
    """Every check of one principal, plus the script's KEYS and per-check ARGV, built once."""

    tenant: str
    checks: tuple[Check, ...]
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    token_keys: tuple[str, ...]  # (reservations, amounts) pairs of the token checks, for settle
    cost_keys: tuple[str, ...] = ()  # the same for the cost checks (amounts in nano-dollars)
    packed_keys: Packed = field(default_factory=lambda: Packed(()), compare=False)  # keys, encoded
    packed_argv: Packed = field(default_factory=lambda: Packed(()), compare=False)  # argv, encoded

    @property
    def has_tokens(self) -> bool:
        return bool(self.token_keys)

    @property
    def has_cost(self) -> bool:
        return bool(self.cost_keys)


def _checks_of(rules: tuple[LimitRule, ...], level: Level, tag: str, scope: str) -> list[Check]:
    """Checks of one level; rules on the same (kind, window, mode) collapse to the tightest."""
    tightest: dict[tuple[Kind, int, bool], int] = {}
    for rule in rules:
        shadow = rule.mode == "shadow"
        cost = round(rule.cost_usd * NANO) if rule.cost_usd is not None else None
        pairs: tuple[tuple[Kind, int | None], ...] = (("requests", rule.requests),
                                                      ("tokens", rule.tokens), ("cost", cost))
        for kind, limit in pairs:
            if limit is None:
                continue
            slot = (kind, rule.window_s, shadow)
            tightest[slot] = min(limit, tightest.get(slot, limit))
    checks = []
    for (kind, window_s, shadow), limit in sorted(tightest.items()):
        suffix = ":shadow" if shadow else ""
        bucketed = kind == "requests" and limit > COUNTER_ABOVE
        if bucketed:
            keys: tuple[str, ...] = (f"rl:{tag}:{scope}:{window_s}{suffix}:cnt",)
        elif kind == "requests":
            keys = (f"rl:{tag}:{scope}:{window_s}{suffix}",)
        else:
            base = f"{'tq' if kind == 'tokens' else 'cq'}:{tag}:{scope}:{window_s}{suffix}"
            keys = (base, base + ":amt")
        checks.append(Check(kind, level, window_s, limit, shadow, keys, bucketed))
    return checks


def build_plan(principal: Principal, settings: LimitsSettings) -> Plan:
    """The checks that apply to `principal` and the script arguments that encode them."""
    tag = "{t:" + encode_part(principal.tenant) + "}"
    key_rules = principal.limits or settings.key
    checks = _checks_of(key_rules, "key", tag, "k:" + encode_part(principal.limit_id))
    checks += _checks_of(settings.tenant, "tenant", tag, "tenant")
    keys: list[str] = []
    argv: list[str] = []
    token_keys: list[str] = []
    cost_keys: list[str] = []
    for check in checks:
        keys.extend(check.keys)
        code = {"requests": "c" if check.bucketed else "r", "tokens": "t", "cost": "$"}[check.kind]
        argv += [code, str(check.window_s * 1000),
                 str(check.limit), "1" if check.shadow else "0"]
        if check.kind == "tokens":
            token_keys.extend(check.keys)
        elif check.kind == "cost":
            cost_keys.extend(check.keys)
    return Plan(principal.tenant, tuple(checks), tuple(keys), tuple(argv), tuple(token_keys),
                tuple(cost_keys), Packed(keys), Packed(argv))
