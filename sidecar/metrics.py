"""Every Prometheus metric, defined once, on an injectable registry (a fresh one per test).

Labels are bounded: routes come from a fixed list, reasons and kinds from code, never from
callers. No per-key label; a tenant label only where configured (not yet).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
)

from sidecar import __version__

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                    10, 30, 60, 120)
_FAST_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


class RouteMetrics:
    """A route's per-request series, resolved once: `labels()` costs a lock and a tuple per call,
    and every request touches four of them."""

    __slots__ = ("_codes", "_requests", "_route", "duration", "overhead", "upstream")

    def __init__(self, metrics: Metrics, route: str) -> None:
        self._requests = metrics.requests
        self._codes: dict[int, Any] = {}
        self.duration = metrics.request_duration.labels(route)
        self.overhead = metrics.overhead.labels(route)
        self.upstream = metrics.upstream_duration.labels(route)
        self._route = route

    def answered(self, status: int) -> Any:
        """The request counter of one status code (statuses are a small, bounded set)."""
        child = self._codes.get(status)
        if child is None:
            child = self._codes[status] = self._requests.labels(self._route, str(status))
        return child


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What /metrics serves: this process's registry, or, with --workers N (prometheus_client
    multiprocess mode, PROMETHEUS_MULTIPROC_DIR set), the sum over every worker's files."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return registry
    merged = CollectorRegistry()
    multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
    return merged


@dataclass(frozen=True, slots=True)
class KnownLabels:
    """Every label value the code can produce, known at start, so each series is exported at 0
    before its first event (dashboards and `rate()` show 0, not "No data")."""

    routes: Iterable[str] = ()
    reasons: Iterable[str] = ()
    kinds: Iterable[str] = ()
    store_ops: Iterable[str] = ()
    features: Iterable[str] = ()
    signals: Iterable[str] = ()
    guards: Iterable[str] = ()


def _installed(name: str) -> str:
    try:
        return package_version(name)
    except PackageNotFoundError:
        return "unknown"


def _standard_collectors(registry: CollectorRegistry) -> None:
    """process_* and python_* as every Prometheus client exports them (prometheus_client's
    default registry has them; ours is injected, so they are added here)."""
    if registry is REGISTRY:
        return
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


class Metrics:
    """The sidecar's metrics. One instance per process, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("sidecar_requests_total", "Requests answered, by route and status",
                                ["route", "code"], registry=r)
        self.blocked = Counter("sidecar_blocked_requests_total",
                               "Requests refused by the sidecar, by route and reason",
                               ["route", "reason"], registry=r)
        self.redactions = Counter("sidecar_redactions_total", "Spans redacted, by kind",
                                  ["kind"], registry=r)
        self.tokens = Counter("sidecar_tokens_total", "Tokens reported by the provider",
                              ["direction"], registry=r)
        self.store_errors = Counter("sidecar_store_errors_total", "Failed store operations",
                                    ["op"], registry=r)
        self.budget_overrun_tokens = Counter(
            "sidecar_budget_overrun_tokens_total",
            "Tokens settled above what their request reserved (the budget check did not see them)",
            registry=r)
        self.conversation_quota = Counter(
            "sidecar_conversation_quota_exceeded_total",
            "Conversation turns a tenant quota stopped: refused before the provider call, or "
            "dropped after the reply (a concurrent request took the room)",
            ["cap", "outcome"], registry=r)
        self.sanitized = Counter("sidecar_sanitized_requests_total",
                                 "Requests whose text the sanitizer changed", registry=r)
        self.abuse_suspects = Counter("sidecar_abuse_suspects_total",
                                      "Requests whose key shows model-extraction signals, by signal",
                                      ["signal"], registry=r)
        self.degraded_requests = Counter("sidecar_degraded_requests_total",
                                         "Requests let through by the fail-open fallback",
                                         ["feature"], registry=r)
        self.request_duration = Histogram("sidecar_request_duration_seconds",
                                          "Whole request time seen by the client", ["route"],
                                          buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("sidecar_overhead_seconds",
                                  "Time spent in the sidecar itself (request minus upstream)",
                                  ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_duration = Histogram("sidecar_upstream_duration_seconds",
                                           "Time waiting on the provider", ["route"],
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.guard_duration = Histogram("sidecar_guard_duration_seconds", "Time per guard",
                                        ["guard"], buckets=_FAST_BUCKETS, registry=r)
        self.store_up = Gauge("sidecar_store_up", "1 while the store answers its health check",
                              registry=r, multiprocess_mode="min")
        self.degraded = Gauge("sidecar_degraded", "1 while running on the fail-open fallback",
                              registry=r, multiprocess_mode="max")
        self.inflight = Gauge("sidecar_inflight_requests", "Requests in flight", registry=r,
                              multiprocess_mode="livesum")
        self.build_info = Gauge("sidecar_build_info",
                                "Always 1; the labels say which sidecar, Python and aiohttp run",
                                ["version", "python", "aiohttp"], registry=r,
                                multiprocess_mode="max")
        self.build_info.labels(__version__, platform.python_version(), _installed("aiohttp")).set(1)
        _standard_collectors(r)
        self._routes: dict[str, RouteMetrics] = {}
        self.prompt_tokens = self.tokens.labels("prompt")
        self.completion_tokens = self.tokens.labels("completion")

    def export_known(self, known: KnownLabels) -> None:
        """Create every known series at 0 (counters and histograms alike)."""
        for route in known.routes:
            self.route(route)
            if route != "unknown":  # an unknown URL is a 404 before any check that refuses
                for reason in known.reasons:
                    self.blocked.labels(route, reason)
        for kind in known.kinds:
            self.redactions.labels(kind)
        for op in known.store_ops:
            self.store_errors.labels(op)
        for feature in known.features:
            self.degraded_requests.labels(feature)
        for signal in known.signals:
            self.abuse_suspects.labels(signal)
        for guard in known.guards:
            self.guard_duration.labels(guard)

    def route(self, route: str) -> RouteMetrics:
        """The per-request series of a route (routes are a fixed, small set)."""
        found = self._routes.get(route)
        if found is None:
            found = self._routes[route] = RouteMetrics(self, route)
        return found


# ---- Usage and cost per tenant and model (sidecar/usage.py) ------------------------------
# Kept apart from Metrics: the `tenant` and `model` label values are opt-in, from an
# allow-list and capped by UsageLabels, so these series stay bounded whatever callers send.


class UsageMetrics:
    """Requests, tokens and cost the provider reported, by (capped) tenant and model."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("sidecar_usage_requests_total",
                                "Answered requests whose usage the provider reported, by tenant and model",
                                ["tenant", "model"], registry=registry)
        self.tokens = Counter("sidecar_usage_tokens_total",
                              "Tokens the provider reported, by tenant, model and direction",
                              ["tenant", "model", "direction"], registry=registry)
        self.cost = Counter("sidecar_usage_cost_usd_total",
                            "Cost of those tokens from the usage.prices table, in US dollars",
                            ["tenant", "model"], registry=registry)


class UsageLabels:
    """Label values for one label: the allow-listed ones as they are, anything else `other`;
    with "*" any value, first come, until `cap` distinct values are in use. Without an
    allow-list every value is `all` (the label is off)."""

    __slots__ = ("_any", "_cap", "_seen")

    OFF, OTHER = "all", "other"
    MAX_LENGTH = 128

    def __init__(self, allowed: tuple[str, ...], cap: int) -> None:
        self._any = "*" in allowed
        self._cap = cap
        named = [a for a in allowed if a != "*"]
        self._seen: dict[str, str] | None = {a: a for a in named[:cap]} if allowed else None

    def __call__(self, value: str) -> str:
        seen = self._seen
        if seen is None:
            return self.OFF
        label = seen.get(value)
        if label is not None:
            return label
        if self._any and len(seen) < self._cap and len(value) <= self.MAX_LENGTH:
            seen[value] = value
            return value
        return self.OTHER
