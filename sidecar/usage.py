"""Usage and cost per tenant, key and model: Prometheus counters with capped labels, and an
hourly report in the store that the admin API reads (docs/usage.md).

Only usage the provider reported is counted, so the figures are the provider's own. The store
write is one script call sent next to settlement's, in the same pipelined write: no extra
round trip, and nobody waits for it. Time (the hour an answer is booked in) comes from Redis.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from sidecar.metrics import Metrics, UsageLabels, UsageMetrics
from sidecar.model import Principal
from sidecar.settings import UsageSettings
from sidecar.store.redis import Store, StoreError

MAX_MODEL_CHARS = 256           # longer model names are booked as their first 256 characters
NANO = 1_000_000_000
GROUPS = ("model", "key_id", "hour")
COUNTERS = {"r": "requests", "p": "prompt_tokens", "c": "completion_tokens", "n": "cost_nusd"}


def usage_prefix(tenant: str) -> str:
    """Every usage key of a tenant starts with this (hash tag: one Cluster slot per tenant)."""
    return f"usage:{{t:{quote(tenant, safe='')}}}:"


@dataclass(slots=True)
class UsageRow:
    """Sums over one group of a report."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_nusd: int = 0
    group: dict[str, Any] = field(default_factory=dict)

    def add(self, counter: str, value: int) -> None:
        name = COUNTERS[counter]
        setattr(self, name, getattr(self, name) + value)

    def public(self) -> dict[str, Any]:
        return {**self.group, "requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "cost_usd": self.cost_nusd / NANO}


class UsageService:
    """Counts each answered request's reported usage and books it in the hourly report."""

    def __init__(self, store: Store, settings: UsageSettings, metrics: Metrics) -> None:
        self.store = store
        self.settings = settings
        self.metrics = UsageMetrics(metrics.registry)
        self._store_errors = metrics.store_errors.labels("usage_record")
        self.tenant_label = UsageLabels(settings.metric_tenants, settings.max_label_values)
        self.model_label = UsageLabels(settings.metric_models, settings.max_label_values)
        self._ttl_s = settings.retention_days * 86400 + 3600
        self._children: dict[tuple[str, str], tuple[Any, Any, Any, Any]] = {}

    def record_soon(self, principal: Principal, model: str, prompt: int,
                    completion: int) -> asyncio.Future[Any] | None:
        """Count one answered request's usage now and send its report write (not awaited: it
        leaves with the settlement, in the next write to the store). Returns what to wait for at
        shutdown."""
        model = model[:MAX_MODEL_CHARS]
        cost = self.settings.cost_nusd(model, prompt, completion)
        series = self._series(self.tenant_label(principal.tenant), self.model_label(model))
        series[0].inc()
        series[1].inc(prompt)
        series[2].inc(completion)
        if cost:
            series[3].inc(cost / NANO)
        if not self.settings.record:
            return None
        call = self.store.start("usage", [usage_prefix(principal.tenant)],
                                [principal.key_id, model, prompt, completion, cost, self._ttl_s],
                                lazy=True)
        return call.when_done(self._booked)

    def _series(self, tenant: str, model: str) -> tuple[Any, Any, Any, Any]:
        """The four counters of a (tenant, model) label pair, resolved once: `labels()` costs a
        lock and a tuple per call. Bounded: both labels are capped."""
        found = self._children.get((tenant, model))
        if found is None:
            m = self.metrics
            found = self._children[(tenant, model)] = (
                m.requests.labels(tenant, model), m.tokens.labels(tenant, model, "prompt"),
                m.tokens.labels(tenant, model, "completion"), m.cost.labels(tenant, model))
        return found

    def _booked(self, error: StoreError | None) -> None:
        if error is not None:
            self._store_errors.inc()

    async def report(self, tenant: str, first_hour: int, last_hour: int, key_id: str | None,
                     group_by: tuple[str, ...]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows grouped by `group_by` (in that order) and the total, over whole hours."""
        reply = await self.store.run("usage_report", [usage_prefix(tenant)], [first_hour, last_hour])
        rows: dict[tuple[Any, ...], UsageRow] = {}
        total = UsageRow()
        for i in range(0, len(reply), 2):
            hour = int(reply[i])
            fields = reply[i + 1]
            for j in range(0, len(fields), 2):
                name = _text(fields[j])
                counter, _, rest = name.partition("|")
                kid, _, model = rest.partition("|")
                if counter not in COUNTERS or (key_id is not None and kid != key_id):
                    continue
                value = int(fields[j + 1])
                values = {"model": model, "key_id": kid, "hour": hour * 3600}
                group = tuple(values[g] for g in group_by)
                row = rows.get(group)
                if row is None:
                    row = rows[group] = UsageRow(group=dict(zip(group_by, group, strict=True)))
                row.add(counter, value)
                total.add(counter, value)
        ordered = [rows[g].public() for g in sorted(rows)]
        return ordered, total.public()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
