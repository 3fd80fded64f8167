"""Frozen, typed settings from an optional TOML file and the `SIDECAR_*` environment.

Each field has one environment name, `SIDECAR_<FIELD>` for top-level fields and
`SIDECAR_<SECTION>_<FIELD>` for fields of a section (DESIGN.md section 9); the
environment overrides the file. Any invalid value raises `ConfigError` with one line
that names the field, so `sidecar` can exit with status 2 before it serves anything.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin
from urllib.parse import SplitResult, unquote, urlsplit

import orjson

from sidecar.errors import ConfigError
from sidecar.model import LimitRule


class Secret(str):
    """A string that never shows itself in reprs, logs or `check-config`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"

    def masked(self) -> str:
        return "***" if self else ""


def _f(default: Any, help: str, *, min: float | None = None, max: float | None = None,
       kind: str = "") -> Any:
    return field(default=default, metadata={"help": help, "min": min, "max": max, "kind": kind})


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str = _f("memory://", "redis://, rediss://, redis+cluster://, "
                  "redis+sentinel://h1:26379,h2:26379/mymaster/0 or memory:// (embedded)")
    timeout_s: float = _f(0.25, "deadline for one store call on the request path", min=0.005, max=30)
    connect_timeout_s: float = _f(1.0, "deadline for opening a store connection", min=0.01, max=60)
    max_connections: int = _f(64, "connections per process to the store", min=1, max=10_000)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str = _f("", "provider base URL, e.g. https://api.openai.com; empty = bundled mock")
    key_env: str = _f("OPENAI_API_KEY", "name of the environment variable holding the provider key")
    connect_timeout_s: float = _f(5.0, "TCP/TLS connect deadline", min=0.01, max=120)
    read_timeout_s: float = _f(60.0, "deadline for the first byte and between chunks", min=0.01)
    total_timeout_s: float = _f(600.0, "deadline for a whole upstream exchange", min=0.1)
    max_connections: int = _f(1000, "concurrent upstream connections per process", min=1)
    max_response_bytes: int = _f(16 * 1024 * 1024, "cap on a non-streamed response", min=1024)
    allow_insecure: bool = _f(False, "allow plain http to a non-loopback upstream")
    kind: Literal["openai", "azure"] = _f(
        "openai", "openai: /v1/... with a bearer key; azure: Azure OpenAI paths and the api-key header")
    api_version: str = _f("2024-10-21", "azure: the api-version query parameter (empty: none sent)")
    azure_endpoint: Literal["deployments", "v1"] = _f(
        "deployments", "azure: /openai/deployments/<deployment>/... or the v1-style /openai/v1/...")
    deployments: tuple[tuple[str, str], ...] = _f(
        (), "azure: model name -> deployment name (a model not listed is its own deployment)",
        kind="map")


@dataclass(frozen=True, slots=True)
class AnthropicSettings:
    url: str = _f("", "Anthropic base URL for /v1/messages; empty = https://api.anthropic.com "
                  "(or the bundled mock when upstream.url is empty too)")
    key_env: str = _f("ANTHROPIC_API_KEY", "name of the environment variable holding the Anthropic key")


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str = _f("0.0.0.0:9090", "host:port of /metrics, /healthz and /readyz")
    ready_requires_store: bool = _f(False, "/readyz fails while the store fails (false: the store "
                                    "shows as degraded in /readyz and sidecar_store_up)")


@dataclass(frozen=True, slots=True)
class AdminSettings:
    listen: str = _f("127.0.0.1:9091", "host:port of the admin API")
    token: Secret = _f(Secret(""), "bearer token for the admin API (at least 32 characters, 8 of "
                       "them different); empty = admin API off")
    failures_per_minute: int = _f(20, "wrong admin tokens per client address per minute before "
                                  "that address gets 429 until the minute is over", min=1)
    failure_delay_s: float = _f(1.0, "delay of each wrong-token answer after an address's first "
                                "five in a minute", min=0, max=10)


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _f("INFO", "log level")


OUTPUT_ACTIONS = ("redact", "block", "flag", "off")
DEFAULT_OUTPUT_ACTIONS = (("secret", "redact"), ("pii", "redact"), ("pii:ip", "flag"),
                          ("leak", "flag"))


@dataclass(frozen=True, slots=True)
class InputSettings:
    max_messages: int = _f(256, "messages per chat request", min=1)
    max_chars_per_message: int = _f(10_000, "characters of text per message", min=1)
    max_chars_per_request: int = _f(100_000, "characters of text per request", min=1)
    max_tokens_per_request: int = _f(32_000, "estimated prompt tokens per request", min=1)
    sanitize: bool = _f(True, "strip control, zero-width, bidi and tag characters before forwarding")
    injection_action: Literal["block", "flag", "off"] = _f(
        "block", "prompt injection: block (400), flag (forward, count, log) or off")
    injection_mode: Literal["enforce", "shadow"] = _f(
        "enforce", "shadow: evaluate and count as blocked, but forward")
    injection_threshold: float = _f(0.5, "score at or above which a message is an injection",
                                    min=0.0, max=1.0)
    injection_roles: tuple[str, ...] = _f(("user", "tool", "function"),
                                          "message roles scanned for injection")
    redact_pii: bool = _f(False, "redact secrets and PII in user messages before they leave")


@dataclass(frozen=True, slots=True)
class OutputSettings:
    scan: bool = _f(True, "scan model output for secrets, PII and system-prompt leaks")
    actions: tuple[tuple[str, str], ...] = _f(
        DEFAULT_OUTPUT_ACTIONS, "action per kind or family (secret, pii, leak, pii:email ...): "
        "redact, block, flag or off")
    mode: Literal["enforce", "shadow"] = _f("enforce", "shadow: count findings, change nothing")
    detect_ip: bool = _f(True, "treat public IP addresses as PII (never private or documentation ranges)")
    system_prompt_min_words: int = _f(8, "consecutive system-prompt words that make a leak", min=3)
    canary: bool = _f(False, "place a per-request canary token in the system message and watch for it")
    holdback_chars: int = _f(8192, "most characters a stream may hold back while scanning", min=64)


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    ttl_s: int = _f(30 * 86400, "how long a conversation is kept after its last turn", min=60)
    max_messages: int = _f(200, "messages kept per conversation (oldest trimmed first)", min=2)
    max_bytes: int = _f(256 * 1024, "bytes of messages kept per conversation (oldest trimmed first)",
                        min=1024)
    replay_max_tokens: int = _f(8000, "estimated tokens of history put before a replayed request",
                                min=1)
    max_per_tenant: int = _f(10_000, "conversations a tenant may keep; a turn that would start "
                             "another is refused (403 conversation_quota_exceeded)", min=1)
    max_bytes_per_tenant: int = _f(256 * 1024 * 1024, "bytes of stored messages a tenant may keep; "
                                   "once reached, turns are refused until conversations are "
                                   "deleted or expire", min=1024)
    master_key_env: str = _f("SIDECAR_CONVERSATIONS_MASTER_KEY",
                             "variable holding the base64 master key for encryption at rest "
                             "(unset: stored in plain text)")


@dataclass(frozen=True, slots=True)
class AbuseSettings:
    mode: Literal["enforce", "shadow"] = _f("enforce", "shadow: count suspects, never throttle or block")
    enabled: bool = _f(True, "record and judge model-extraction signals (one store call per request)")
    on_store_error: Literal["deny", "allow"] = _f(
        "allow", "store down: allow (skip the abuse check, counted) or deny (503)")
    window_s: int = _f(600, "sliding window of the per-window signals (a whole number of buckets)",
                       min=10, max=86400)
    bucket_s: int = _f(120, "time bucket of the window; window_s / bucket_s buckets are read per "
                       "request", min=1, max=3600)
    cooldown_s: float = _f(300.0, "how long a throttle or block lasts (the daily cap: to day's end)",
                           min=0.1, max=86400)
    throttle_per_minute: int = _f(6, "requests per minute a throttled key (or tenant) may still make",
                                  min=0, max=100_000)
    key_requests: int = _f(1200, "volume: requests per key per window (0 = off)", min=0)
    key_distinct: int = _f(600, "distinct normalized prompts per key per window (0 = off)", min=0)
    key_template: int = _f(24, "templated probing: distinct prompts of one key in one similarity "
                           "bucket per window (0 = off)", min=0)
    key_embedding_inputs: int = _f(20_000, "embedding inputs per key per window (0 = off)", min=0)
    key_output_tokens: int = _f(400_000, "completion tokens per key per window (0 = off)", min=0)
    key_daily_requests: int = _f(20_000, "requests per key per UTC day (0 = off)", min=0)
    tenant_requests: int = _f(12_000, "volume: requests per tenant per window (0 = off)", min=0)
    tenant_distinct: int = _f(6000, "distinct normalized prompts per tenant per window (0 = off)",
                              min=0)
    tenant_template: int = _f(240, "distinct prompts of a tenant in one similarity bucket per "
                              "window (0 = off)", min=0)
    tenant_embedding_inputs: int = _f(200_000, "embedding inputs per tenant per window (0 = off)",
                                      min=0)
    tenant_output_tokens: int = _f(4_000_000, "completion tokens per tenant per window (0 = off)",
                                   min=0)
    tenant_daily_requests: int = _f(200_000, "requests per tenant per UTC day (0 = off)", min=0)
    volume_policy: Literal["off", "flag", "throttle", "block"] = _f(
        "flag", "request volume over its threshold: off, flag, throttle or block")
    distinct_policy: Literal["off", "flag", "throttle", "block"] = _f(
        "flag", "distinct prompts over their threshold: off, flag, throttle or block")
    template_policy: Literal["off", "flag", "throttle", "block"] = _f(
        "flag", "templated probing: off, flag, throttle or block")
    embeddings_policy: Literal["off", "flag", "throttle", "block"] = _f(
        "flag", "embedding harvesting: off, flag, throttle or block")
    output_policy: Literal["off", "flag", "throttle", "block"] = _f(
        "flag", "output-token volume: off, flag, throttle or block")
    daily_policy: Literal["off", "flag", "throttle", "block"] = _f(
        "flag", "daily request cap: off, flag, throttle or block")

    def __post_init__(self) -> None:
        if self.window_s % self.bucket_s or not 1 <= self.window_s // self.bucket_s <= 60:
            raise ConfigError("abuse.window_s: must be 1 to 60 whole buckets of abuse.bucket_s, "
                              f"got {self.window_s} s / {self.bucket_s} s")


@dataclass(frozen=True, slots=True)
class AuthSettings:
    cache_ttl_s: float = _f(60.0, "how long a verified key is trusted without asking the store",
                            min=1, max=3600)
    cache_size: int = _f(10_000, "verified keys kept per process (LRU)", min=1)
    negative_ttl_s: float = _f(5.0, "how long a refused key is refused without asking again",
                               min=0, max=300)
    failed_per_minute: int = _f(20, "failed verifications per key id and client address per "
                                "minute before that address is refused without verifying (a key "
                                "verified before in this process is never refused by it)", min=1)
    max_concurrent_verifications: int = _f(2, "argon2 verifications running at once per process",
                                           min=1, max=64)
    argon2_time_cost: int = _f(3, "argon2id iterations (RFC 9106: 3)", min=1, max=20)
    argon2_memory_kib: int = _f(65536, "argon2id memory in KiB (RFC 9106: 64 MiB)", min=8192)
    argon2_parallelism: int = _f(4, "argon2id lanes (RFC 9106: 4)", min=1, max=16)
    demo_key: bool = _f(True, "on the memory:// store, create a demo key at start and print it once")


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    key: tuple[LimitRule, ...] = _f((), "default rules per API key (a key's own limits replace them)")
    tenant: tuple[LimitRule, ...] = _f((), "rules per tenant, shared by all of its keys")
    on_store_error: Literal["deny", "allow"] = _f(
        "deny", "store down: deny (503) or allow through a bounded in-process fallback limiter")
    fallback_share: float = _f(0.1, "share of each limit one process may admit while degraded",
                               min=0.0, max=1.0)
    default_max_tokens: int = _f(1024, "completion tokens reserved when a request sets no max_tokens",
                                 min=1)
    max_reserved_tokens: int = _f(131072, "cap on the tokens one request may reserve", min=1)


BUILTIN_GUARDS = ("validate", "injection", "sanitize", "redact_input", "output")
_GUARD_KEYS = frozenset({"enabled", "mode", "action", "threshold", "budget_s", "on_timeout",
                         "actions", "options"})
_POLICY_KEYS = frozenset({"guards", "trusted_roles", "allow_token_ids", "tenants"})
_POLICY_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """How one policy runs one guard (DESIGN.md section 3a)."""

    name: str
    enabled: bool = True
    mode: Literal["enforce", "shadow"] = "enforce"
    action: Literal["", "block", "flag"] = ""  # "" = as the guard decides
    threshold: float | None = None  # injection score threshold
    budget_s: float = 0.25  # slow guards: time allowed off the event loop
    on_timeout: Literal["allow", "block"] = "allow"
    actions: tuple[tuple[str, str], ...] = ()  # output: action per finding kind or family
    options: tuple[tuple[str, Any], ...] = ()  # plug-in guards: keyword arguments


@dataclass(frozen=True, slots=True)
class Policy:
    """A named guard policy: which guards run, in which order, tuned how, for which tenants."""

    name: str
    guards: tuple[str, ...] = ()  # empty = the default policy's list
    trusted_roles: tuple[str, ...] = ("system", "developer")
    allow_token_ids: bool = False
    tenants: tuple[str, ...] = ()
    tuning: tuple[GuardPolicy, ...] = ()

    def guard(self, name: str) -> GuardPolicy | None:
        return next((g for g in self.tuning if g.name == name), None)


def parse_policies(name: str, raw: Any) -> tuple[Policy, ...]:
    """`[policies.<name>]` tables (or JSON in SIDECAR_POLICIES), each validated field by field."""
    raw = _from_env_json(name, raw, "object of policy name -> table")
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table of policies")
    out = []
    for policy_name, table in raw.items():
        where = f"{name}.{policy_name}"
        if not _POLICY_NAME.fullmatch(policy_name):
            raise ConfigError(f"{where}: a policy name is 1-64 of a-z 0-9 _ . - ")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        kwargs: dict[str, Any] = {"name": policy_name}
        tuning = []
        for key, value in table.items():
            if key in ("guards", "trusted_roles", "tenants"):
                if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                    raise ConfigError(f"{where}.{key}: expected a list of strings")
                kwargs[key] = tuple(value)
            elif key == "allow_token_ids":
                kwargs[key] = _coerce(f"{where}.{key}", bool, value, {})
            elif isinstance(value, dict):
                tuning.append(_guard_policy(f"{where}.{key}", key, value))
            else:
                raise ConfigError(f"{where}.{key}: unknown setting (a guard's table, or one of "
                                  + ", ".join(sorted(_POLICY_KEYS)) + ")")
        kwargs["tuning"] = tuple(tuning)
        out.append(Policy(**kwargs))
    return tuple(out)


def _guard_policy(where: str, guard: str, table: Mapping[str, Any]) -> GuardPolicy:
    hints = typing.get_type_hints(GuardPolicy)
    kwargs: dict[str, Any] = {"name": guard}
    for key, value in table.items():
        if key not in _GUARD_KEYS:
            raise ConfigError(f"{where}.{key}: unknown setting (one of {', '.join(sorted(_GUARD_KEYS))})")
        if key == "actions":
            kwargs[key] = _actions(f"{where}.{key}", value)
        elif key == "options":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.options: expected a table")
            kwargs[key] = tuple(value.items())
        elif key == "threshold":
            kwargs[key] = _coerce(f"{where}.{key}", float, value, {"min": 0.0, "max": 1.0})
        elif key == "budget_s":
            kwargs[key] = _coerce(f"{where}.{key}", float, value, {"min": 0.001, "max": 60.0})
        else:
            kwargs[key] = _coerce(f"{where}.{key}", hints[key], value, {})
    return GuardPolicy(**kwargs)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """What a model costs, in US dollars per million tokens (docs/usage.md)."""

    model: str
    input_per_mtok: float
    output_per_mtok: float


@dataclass(frozen=True, slots=True)
class UsageSettings:
    record: bool = _f(True, "keep a usage report per tenant, key, model and hour in the store "
                      "(one more script per answered request, in the same write as settlement)")
    retention_days: int = _f(35, "how long hourly usage is kept in the store", min=1, max=400)
    metric_tenants: tuple[str, ...] = _f((), "tenants with their own `tenant` label on the usage "
                                         "metrics; \"*\" = any, first come, up to max_label_values; "
                                         "empty = no tenant label (value \"all\")")
    metric_models: tuple[str, ...] = _f((), "models with their own `model` label, as metric_tenants")
    max_label_values: int = _f(50, "most distinct values per label; the rest count as \"other\"",
                               min=1, max=1000)
    prices: tuple[ModelPrice, ...] = _f((), "price per model: a table of model -> "
                                        "{input = $/Mtok, output = $/Mtok}; models not listed cost 0")

    def cost_nusd(self, model: str, prompt: int, completion: int) -> int:
        """What `prompt` and `completion` tokens of `model` cost, in nano-dollars (integers add up
        exactly: tokens x dollars per million tokens x 1000), rounded up; 0 when unpriced."""
        for price in self.prices:
            if price.model == model:
                return math.ceil((prompt * price.input_per_mtok + completion * price.output_per_mtok)
                                 * 1000 - 1e-6)
        return 0


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = _f("127.0.0.1:8080", "host:port of the OpenAI-compatible proxy")
    workers: int = _f(1, "worker processes sharing the proxy port", min=1, max=256)
    max_body_bytes: int = _f(1024 * 1024, "largest accepted request body", min=1024)
    max_json_depth: int = _f(64, "deepest JSON nesting accepted in a request body", min=4, max=512)
    header_timeout_s: float = _f(15.0, "deadline to receive request headers (and idle keep-alive)",
                                 min=0.05, max=3600)
    body_timeout_s: float = _f(30.0, "deadline to receive a request body", min=0.05, max=3600)
    shutdown_grace_s: float = _f(25.0, "time in-flight requests get to finish on SIGTERM",
                                 min=0, max=3600)
    store: StoreSettings = field(default_factory=StoreSettings)
    upstream: UpstreamSettings = field(default_factory=UpstreamSettings)
    anthropic: AnthropicSettings = field(default_factory=AnthropicSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    log: LogSettings = field(default_factory=LogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    input: InputSettings = field(default_factory=InputSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    conversations: ConversationSettings = field(default_factory=ConversationSettings)
    abuse: AbuseSettings = field(default_factory=AbuseSettings)
    policies: tuple[Policy, ...] = _f((), "named guard policies ([policies.<name>] tables); "
                                      "'default' applies unless a key or tenant names another")
    usage: UsageSettings = field(default_factory=UsageSettings)

    @property
    def upstream_key(self) -> Secret:
        """The provider key, read from the variable that `upstream.key_env` names."""
        return Secret(os.environ.get(self.upstream.key_env, ""))

    @property
    def anthropic_key(self) -> Secret:
        """The Anthropic key, read from the variable that `anthropic.key_env` names."""
        return Secret(os.environ.get(self.anthropic.key_env, ""))

    @property
    def anthropic_url(self) -> str:
        """Where /v1/messages goes: `anthropic.url`, else Anthropic's own API (`serve` points
        it at the bundled mock when it runs one)."""
        return self.anthropic.url or ANTHROPIC_API


def _coerce(name: str, hint: Any, raw: Any, meta: Mapping[str, Any]) -> Any:
    """Turn a TOML value or an environment string into the field's type, or fail naming it."""
    origin = get_origin(hint)
    try:
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("expected a whole number")
            value: Any = int(str(raw).strip().replace("_", "")) if isinstance(raw, str) else int(raw)
        elif hint is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("expected a finite number")
        elif hint is Secret:
            value = Secret(str(raw))
        elif hint is str:
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            value = raw
        elif origin is Literal:
            choices = get_args(hint)
            text = str(raw).strip()
            match = next((c for c in choices if str(c).lower() == text.lower()), None)
            if match is None:
                raise ValueError("expected one of " + ", ".join(map(str, choices)))
            value = match
        elif origin is tuple and get_args(hint)[0] is Policy:
            return parse_policies(name, raw)
        elif origin is tuple and get_args(hint)[0] is LimitRule:
            return _limit_rules(name, raw)
        elif origin is tuple and get_args(hint)[0] is ModelPrice:
            return _prices(name, raw)
        elif meta.get("kind") == "map":
            return _string_map(name, raw)
        elif origin is tuple and get_args(hint)[0] is str:
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ValueError("expected a list of strings")
            return tuple(i.strip() for i in items if i.strip())
        elif origin is tuple:
            return _actions(name, raw)
        elif origin in (types.UnionType, typing.Union):
            return _coerce(name, next(a for a in get_args(hint) if a is not type(None)), raw, meta)
        else:  # pragma: no cover - a field type this loader does not know is a programming error
            raise ValueError(f"unsupported type {hint!r}")
    except (TypeError, ValueError) as exc:
        detail = str(exc) if "expected" in str(exc) else f"expected {getattr(hint, '__name__', hint)}"
        raise ConfigError(f"{name}: invalid value ({detail})") from None
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        raise ConfigError(f"{name}: must be at least {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(f"{name}: must be at most {high}, got {value}")
    return value


def _from_env_json(name: str, raw: Any, what: str) -> Any:
    """A structured value arrives from TOML as is, or from the environment as JSON text."""
    if not isinstance(raw, str):
        return raw
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ConfigError(f"{name}: expected a JSON {what}") from None


def _string_map(name: str, raw: Any) -> tuple[tuple[str, str], ...]:
    """A table of name -> name (TOML table, or a JSON object in the environment)."""
    raw = _from_env_json(name, raw, "object of name -> name")
    if not isinstance(raw, dict) or not all(isinstance(v, str) and v for v in raw.values()):
        raise ConfigError(f"{name}: expected a table of name -> non-empty string")
    return tuple(raw.items())


def _limit_rules(name: str, raw: Any) -> tuple[LimitRule, ...]:
    """Rules from a TOML array of tables, or from JSON in an environment variable."""
    raw = _from_env_json(name, raw, "list of rules")
    if not isinstance(raw, list):
        raise ConfigError(f"{name}: expected a list of rules")
    return tuple(parse_limit_rule(f"{name}[{i}]", item) for i, item in enumerate(raw))


def _prices(name: str, raw: Any) -> tuple[ModelPrice, ...]:
    """A price table from TOML or env JSON, e.g. {"gpt-4o": {"input": 2.5, "output": 10}}."""
    raw = _from_env_json(name, raw, "object of model -> {input, output}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table of model -> {{input = ..., output = ...}}")
    prices = []
    for model, entry in raw.items():
        where = f"{name}.{model}"
        if not isinstance(entry, dict) or set(entry) != {"input", "output"}:
            raise ConfigError(f"{where}: expected {{input = <$ per million tokens>, output = ...}}")
        for part in ("input", "output"):
            value = entry[part]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e6:
                raise ConfigError(f"{where}.{part}: expected dollars per million tokens, 0 to 1e6")
        prices.append(ModelPrice(model, float(entry["input"]), float(entry["output"])))
    return tuple(prices)


def _actions(name: str, raw: Any) -> tuple[tuple[str, str], ...]:
    """Output actions from a TOML table or env JSON, e.g. {"secret": "block", "pii:ip": "off"}."""
    raw = _from_env_json(name, raw, "object of kind -> action")
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a table of kind -> action")
    merged = dict(DEFAULT_OUTPUT_ACTIONS)
    for kind, action in raw.items():
        if action not in OUTPUT_ACTIONS:
            raise ConfigError(f"{name}.{kind}: expected one of {', '.join(OUTPUT_ACTIONS)}")
        merged[kind] = action
    return tuple(merged.items())


MAX_COST_USD = 1e6  # a cost budget in nano-dollars stays an exact integer in Lua (< 2**53)


def parse_limit_rule(name: str, item: Any) -> LimitRule:
    """One rule such as {"window_s": 60, "requests": 100} or {"window_s": 86400, "tokens": 2e6}."""
    if not isinstance(item, dict):
        raise ConfigError(f"{name}: expected a table such as {{window_s = 60, requests = 100}}")
    unknown = set(item) - {"window_s", "requests", "tokens", "mode", "cost_usd"}
    if unknown:
        raise ConfigError(f"{name}: unknown field {sorted(unknown)[0]!r}")
    values: dict[str, Any] = {}
    for field_name in ("window_s", "requests", "tokens"):
        if field_name in item:
            value = item[field_name]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**12:
                raise ConfigError(f"{name}.{field_name}: expected a whole number from 1 to 10**12")
            values[field_name] = value
    if "window_s" not in values:
        raise ConfigError(f"{name}.window_s: required")
    if values["window_s"] > 31 * 86400:
        raise ConfigError(f"{name}.window_s: must be at most {31 * 86400}")
    if "cost_usd" in item:
        cost = item["cost_usd"]
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not 0 < cost <= MAX_COST_USD:
            raise ConfigError(f"{name}.cost_usd: expected US dollars above 0, at most {MAX_COST_USD:g}")
        values["cost_usd"] = float(cost)
    if "requests" not in values and "tokens" not in values and "cost_usd" not in values:
        raise ConfigError(f"{name}: needs requests, tokens or cost_usd")
    mode = item.get("mode", "enforce")
    if mode not in ("enforce", "shadow"):
        raise ConfigError(f"{name}.mode: expected enforce or shadow")
    return LimitRule(mode=mode, **values)


def _build(cls: type[Any], prefix: str, file_values: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in file_values:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown setting")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            section = file_values.get(f.name, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{name}: expected a table")
            kwargs[f.name] = _build(typing.cast(type[Any], hint), f"{name}.", section, env)
            continue
        env_name = env_name_of(name)
        if env_name in env:
            kwargs[f.name] = _coerce(name, hint, env[env_name], f.metadata)
        elif f.name in file_values:
            kwargs[f.name] = _coerce(name, hint, file_values[f.name], f.metadata)
    return cls(**kwargs)


def env_name_of(dotted: str) -> str:
    """`upstream.key_env` -> `SIDECAR_UPSTREAM_KEY_ENV`."""
    return "SIDECAR_" + dotted.replace(".", "_").upper()


def load_settings(path: str | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any) and the environment; validate everything or raise ConfigError."""
    env = os.environ if env is None else env
    path = path or env.get("SIDECAR_CONFIG") or None
    file_values: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                file_values = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot be read ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path}: not valid UTF-8") from None
        except RecursionError:
            raise ConfigError(f"config file {path}: nested too deeply") from None
    settings: Settings = _build(Settings, "", file_values, env)
    _check_relations(settings)
    return settings


_PORT = re.compile(r"[0-9]{1,5}")


def _check_listen(name: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or int(port) > 65535 or not host:
        raise ConfigError(f"{name}: expected host:port, got {value!r}")


def _split_url(name: str, url: str) -> SplitResult:
    """urlsplit, with its ValueErrors (a bad IPv6 literal, a port out of range) as ConfigError."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parses and range-checks the port
    except ValueError:
        raise ConfigError(f"{name}: not a valid URL") from None
    return parts


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_EXAMPLE = "e.g. redis+sentinel://host1:26379,host2:26379/mymaster/0"


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed `redis+sentinel://` store URL: where the sentinels are and which master to ask for.

    The credentials authenticate to the master (the sentinels are asked without them); with
    `rediss+sentinel://` both the sentinels and the master are reached over TLS."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: Secret | None = None
    tls: bool = False


def parse_sentinel_url(url: str, name: str = "store.url") -> SentinelURL:
    """`redis+sentinel://[user:pass@]host1:26379,host2[:26379]/<service>[/<db>]`, or a one-line
    ConfigError naming `name` (the URL itself is never echoed: it may hold a password)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise ConfigError(f"{name}: expected redis+sentinel:// or rediss+sentinel://")
    if "?" in rest or "#" in rest:
        raise ConfigError(f"{name}: a sentinel URL takes no query or fragment "
                          "(percent-encode ? and # in a password)")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, _, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = Secret(unquote(secret)) if secret else None
    if not hosts:
        raise ConfigError(f"{name}: needs at least one sentinel host:port, {SENTINEL_EXAMPLE}")
    sentinels = tuple(_sentinel_address(name, item) for item in hosts.split(","))
    segments = path.split("/") if path else []
    if not segments or not segments[0]:
        raise ConfigError(f"{name}: needs the service (master) name as its path, {SENTINEL_EXAMPLE}")
    if len(segments) > 2 and any(segments[2:]):
        raise ConfigError(f"{name}: expected /<service>/<db> after the sentinels, {SENTINEL_EXAMPLE}")
    db_text = segments[1] if len(segments) > 1 else ""
    if db_text and not (db_text.isascii() and db_text.isdigit() and len(db_text) <= 5):
        raise ConfigError(f"{name}: the database after the service name must be a whole number, "
                          f"got {db_text!r}")
    return SentinelURL(sentinels, unquote(segments[0]), int(db_text or 0), username, password,
                       tls=scheme == "rediss+sentinel")


def _sentinel_address(name: str, item: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` (26379 when the port is left out)."""
    item = item.strip()
    if item.startswith("["):
        host, bracket, tail = item[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ConfigError(f"{name}: sentinel address {item!r} is not [ipv6]:port")
        port = tail[1:] if tail else "26379"
    else:
        host, colon, port = item.partition(":")
        port = port if colon else "26379"
    if not host or any(c in host for c in " /@[]"):
        raise ConfigError(f"{name}: sentinel address {item!r} needs a host, {SENTINEL_EXAMPLE}")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{name}: sentinel address {item!r} needs a port from 1 to 65535")
    return host, int(port)


def is_loopback_host(host: str) -> bool:
    """True for localhost and loopback addresses (the only plain-http upstreams allowed by default)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


ADMIN_TOKEN_MIN_CHARS = 32
ADMIN_TOKEN_MIN_DISTINCT = 8


def admin_token_problem(token: str) -> str | None:
    """Why `token` is too weak to guard the admin API, or None. A random token passes (32
    URL-safe characters carry 192 bits; 32 hex characters, 128); a short word or a repeated
    pattern does not. Never names the token itself."""
    if len(token) < ADMIN_TOKEN_MIN_CHARS:
        return f"needs at least {ADMIN_TOKEN_MIN_CHARS} characters, got {len(token)}"
    if len(set(token)) < ADMIN_TOKEN_MIN_DISTINCT:
        return f"needs at least {ADMIN_TOKEN_MIN_DISTINCT} different characters"
    return None


def _check_relations(s: Settings) -> None:
    _check_listen("listen", s.listen)
    if s.admin.token:
        problem = admin_token_problem(s.admin.token)
        if problem:
            raise ConfigError(f"admin.token: too weak: {problem} (make one with: python3 -c "
                              "'import secrets; print(secrets.token_urlsafe(32))')")
    _check_listen("metrics.listen", s.metrics.listen)
    _check_listen("admin.listen", s.admin.listen)
    if s.store.url.partition("://")[0] in SENTINEL_SCHEMES:
        parse_sentinel_url(s.store.url)  # several hosts in one netloc: not for urlsplit
    else:
        scheme = _split_url("store.url", s.store.url).scheme
        if scheme not in {"memory", "redis", "rediss", "redis+cluster", "rediss+cluster"}:
            raise ConfigError(
                "store.url: expected memory://, redis://, rediss://, redis+cluster:// or "
                f"redis+sentinel://, got scheme {scheme or '(none)'!r}"
            )
    if s.upstream.url:
        parts = _split_url("upstream.url", s.upstream.url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError("upstream.url: expected an http(s) URL such as https://api.openai.com")
        if parts.scheme == "http" and not (
            is_loopback_host(parts.hostname) or s.upstream.allow_insecure
        ):
            raise ConfigError(
                "upstream.url: plain http is allowed only for loopback upstreams; "
                "use https or set upstream.allow_insecure"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError("upstream.url: must not carry credentials, a query or a fragment")
    if s.anthropic.url:
        _check_base_url("anthropic.url", s.anthropic.url, s.upstream.allow_insecure)
    for model, deployment in s.upstream.deployments:
        if not _DEPLOYMENT.fullmatch(deployment):
            raise ConfigError(f"upstream.deployments.{model}: a deployment name is 1-64 of "
                              "A-Z a-z 0-9 . _ - (not . or ..)")


ANTHROPIC_API = "https://api.anthropic.com"
_DEPLOYMENT = re.compile(r"(?!\.\.?$)[A-Za-z0-9._-]{1,64}")


def _check_base_url(name: str, url: str, allow_insecure: bool) -> None:
    parts = _split_url(name, url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"{name}: expected an http(s) URL such as https://api.anthropic.com")
    if parts.scheme == "http" and not (is_loopback_host(parts.hostname) or allow_insecure):
        raise ConfigError(f"{name}: plain http is allowed only for loopback hosts; use https "
                          "or set upstream.allow_insecure")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{name}: must not carry credentials, a query or a fragment")


def url_without_password(url: str) -> str:
    """`url` with the password of its user part replaced by *** (store URLs may carry one)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return url
    userinfo, _, hosts = authority.rpartition("@")
    user = userinfo.partition(":")[0] if ":" in userinfo else ""
    return f"{scheme}://{user}:***@{hosts}{slash}{path}"


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as a nested dict with every secret masked (for check-config)."""

    def walk(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return {f.name: walk(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, Secret):
            return obj.masked()
        return obj

    out: dict[str, Any] = walk(settings)
    out["upstream"]["key"] = settings.upstream_key.masked() or "(not set)"
    out["upstream"]["deployments"] = dict(settings.upstream.deployments)
    out["anthropic"]["key"] = settings.anthropic_key.masked() or "(not set)"
    out["store"]["url"] = url_without_password(settings.store.url)
    return out
