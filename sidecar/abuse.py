"""Model-extraction and abuse signals per key and per tenant, judged in one store call.

`check` runs `abuse.lua` once per request, designed to go out in the same pipelined write as
the limiter's admission (`asyncio.gather`), so together they cost one round trip. The script
records the request in time buckets (requests, distinct prompts in HyperLogLogs, templated
probing in min-hash buckets, embedding inputs, output tokens, a daily count) and compares the
window's sums with the thresholds of `AbuseSettings`. Each signal has a policy: `flag` counts
the suspect (`sidecar_abuse_suspects_total{signal}`) and logs one line per key and signal per
window, without any prompt text; `throttle` and `block` start a cool-down on the key (or the
tenant) that the script itself enforces. In `shadow` mode nothing is ever throttled or
blocked, but suspects are counted and logged as in enforce mode.

A store failure never blocks a request unless `on_store_error = "deny"`; every skipped check
is counted (`sidecar_degraded_requests_total{feature="abuse"}`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.errors import AbuseDetected, RateLimitExceeded, StoreUnavailable
from sidecar.guards.fingerprint import Features
from sidecar.log import log_fields
from sidecar.metrics import Metrics
from sidecar.model import Principal
from sidecar.settings import AbuseSettings
from sidecar.store.breaker import CircuitBreaker
from sidecar.store.pipelined import Packed
from sidecar.store.redis import KeyOrArg, Store, StoreCall, StoreError

log = logging.getLogger("sidecar.abuse")

BREAKER_S = 0.5   # after a store failure, skip the abuse check this long (then probe once)
MAX_BUCKETS = 8   # LSH bucket ids sent per request (fingerprint makes at most 4)
MAX_CACHED_KEYS = 4096  # principals whose script KEYS are kept encoded
_POLICY = {"off": 0, "flag": 1, "throttle": 2, "block": 3}
_ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class AbuseVerdict:
    """What the abuse check decided for one request.

    `action` is what the proxy must do: "allow", "throttle" (answer 429) or "block" (403).
    `signals` are the tripped signals ("key:template", "tenant:volume", ...), `score` the
    highest value/threshold ratio of any signal (1.0 = at a threshold). In shadow mode
    `action` is always "allow" and `shadow_action` says what enforce mode would have done.
    """

    action: str = _ALLOW
    signals: tuple[str, ...] = ()
    score: float = 0.0
    retry_after_s: int = 0
    shadow_action: str = ""
    degraded: bool = False  # the store did not answer; nothing was judged


ALLOW = AbuseVerdict()


def key_prefix(principal: Principal) -> str:
    """Where a key's abuse state lives (the key's lineage: rotated keys share it)."""
    return f"abuse:{{t:{principal.tenant}}}:k:{principal.limit_id}:"


def tenant_prefix(tenant: str) -> str:
    """Where a tenant's abuse state lives (same hash tag as its keys: one Cluster slot)."""
    return f"abuse:{{t:{tenant}}}:tenant:"


def enforce(verdict: AbuseVerdict) -> None:
    """Raise the error the proxy answers with for a throttled or blocked request."""
    if verdict.action == _ALLOW:
        return
    headers = {"Retry-After": str(verdict.retry_after_s)}
    if verdict.action == "block":
        raise AbuseDetected(headers=headers)
    raise RateLimitExceeded(
        "Requests from this API key are slowed down because of suspected abuse. "
        f"Retry after {verdict.retry_after_s} s.", headers=headers)


class AbuseService:
    """Records and judges extraction signals; one instance per process."""

    def __init__(self, store: Store, settings: AbuseSettings, metrics: Metrics, *,
                 breaker_s: float = BREAKER_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        s = settings
        self._nbuckets = s.window_s // s.bucket_s
        # Everything but the per-request values, encoded once.
        self._head = Packed((s.mode, s.bucket_s, self._nbuckets, int(s.cooldown_s * 1000),
                             s.throttle_per_minute))
        self._tail = Packed((
            s.key_requests, s.key_distinct, s.key_template, s.key_embedding_inputs,
            s.key_output_tokens, s.key_daily_requests,
            s.tenant_requests, s.tenant_distinct, s.tenant_template, s.tenant_embedding_inputs,
            s.tenant_output_tokens, s.tenant_daily_requests,
            *(_POLICY[p] for p in (s.volume_policy, s.distinct_policy, s.template_policy,
                                   s.embeddings_policy, s.output_policy, s.daily_policy)),
        ))
        self._tenant_on = any((s.tenant_requests, s.tenant_distinct, s.tenant_template,
                               s.tenant_embedding_inputs, s.tenant_output_tokens,
                               s.tenant_daily_requests))
        self._output_on = s.enabled and (s.key_output_tokens > 0 or s.tenant_output_tokens > 0) \
            and s.output_policy != "off"
        self._breaker = CircuitBreaker(breaker_s, clock)
        self._packed_keys: dict[tuple[str, str], Packed] = {}

    async def check(self, principal: Principal, features: Features) -> AbuseVerdict:
        """Record one request and judge its key and tenant (one store call)."""
        return await self.begin(principal, features).verdict()

    def begin(self, principal: Principal, features: Features) -> PendingCheck:
        """Send the check now (it shares the event-loop turn's one write with the admission the
        caller starts next) and return it; `await pending.verdict()` judges the reply."""
        if not self.settings.enabled:
            return PendingCheck(self, principal, None)
        if not self._use_store():
            return PendingCheck(self, principal, None, degraded=True)
        args: tuple[KeyOrArg, ...] = (self._head, features.prompt_hash, features.inputs,
                                      self._tail, *features.buckets[:MAX_BUCKETS])
        return PendingCheck(self, principal, self.store.start("abuse", self._keys(principal), args))

    async def record_output(self, principal: Principal, tokens: int, at_ms: int = 0) -> None:
        """Add a response's completion tokens to its key and tenant (call after the response),
        in the bucket of Redis time `at_ms` (the request's admission; 0: now)."""
        call = self._start_output(principal, tokens, at_ms)
        if call is None:
            return
        try:
            await call.reply()
        except StoreError as error:
            self._output_recorded(error)
        except BaseException:
            self._breaker.done()  # cancelled: no outcome to book, but the probe is over
            raise
        else:
            self._output_recorded(None)

    def record_output_soon(self, principal: Principal, tokens: int,
                           at_ms: int = 0) -> asyncio.Future[Any] | None:
        """`record_output` for a caller that does not wait: the call leaves with the next write
        (within a few ms) and is booked when the reply arrives, without a task. Returns what to
        wait for at shutdown."""
        call = self._start_output(principal, tokens, at_ms, lazy=True)
        if call is None:
            return None
        return call.when_done(self._output_recorded)

    def _start_output(self, principal: Principal, tokens: int, at_ms: int, *,
                      lazy: bool = False) -> StoreCall | None:
        if not self._output_on or tokens <= 0 or not self._use_store():
            return None
        bucket = at_ms // 1000 // self.settings.bucket_s if at_ms > 0 else ""
        return self.store.start("abuse_output", self._keys(principal),
                                (self.settings.bucket_s, self._nbuckets, int(tokens), bucket),
                                lazy=lazy)

    def _output_recorded(self, error: StoreError | None) -> None:
        """Book an output record's outcome (the breaker was asked when it was sent)."""
        self._breaker.done()
        if error is not None:
            self._failed("abuse_output")

    def _keys(self, principal: Principal) -> tuple[Packed]:
        """The script's KEYS for a principal, encoded once per key lineage (bounded cache)."""
        cache_key = (principal.tenant, principal.limit_id)
        packed = self._packed_keys.get(cache_key)
        if packed is None:
            if len(self._packed_keys) >= MAX_CACHED_KEYS:
                self._packed_keys.clear()
            tenant = tenant_prefix(principal.tenant) if self._tenant_on else ""
            packed = self._packed_keys[cache_key] = Packed((key_prefix(principal), tenant))
        return (packed,)

    # -- reply ------------------------------------------------------------------------------
    def _verdict(self, principal: Principal, reply: Any) -> AbuseVerdict:
        action = _text(reply[0])
        retry_ms = int(reply[1])
        score = int(reply[2]) / 1000
        signals = tuple(_text(reply[3]).split(",")) if reply[3] else ()
        if reply[4]:
            self._report(principal, _text(reply[4]).split(","), score)
        retry_s = max(1, math.ceil(retry_ms / 1000)) if action != _ALLOW else 0
        if self.settings.mode == "shadow":
            return AbuseVerdict(_ALLOW, signals, score, 0, action if action != _ALLOW else "")
        return AbuseVerdict(action, signals, score, retry_s)

    def _report(self, principal: Principal, fresh: list[str], score: float) -> None:
        """Count and log a suspect once per key (or tenant) and signal per window."""
        for signal in fresh:
            self.metrics.abuse_suspects.labels(signal).inc()
            level, _, name = signal.partition(":")
            log_fields(log, logging.WARNING, "abuse suspect", signal=name, scope=level,
                       tenant=principal.tenant,
                       key_id=principal.key_id if level == "key" else None,
                       score=score, mode=self.settings.mode)

    # -- store failure policy ---------------------------------------------------------------
    def _use_store(self) -> bool:
        return self._breaker.allow()

    def _failed(self, op: str) -> None:
        self.metrics.store_errors.labels(op).inc()
        self._breaker.failed()

    def _degrade(self) -> AbuseVerdict:
        if self.settings.on_store_error == "deny":
            raise StoreUnavailable(headers={"Retry-After": "1"})
        self.metrics.degraded_requests.labels("abuse").inc()
        return AbuseVerdict(degraded=True)


class PendingCheck:
    """An abuse check on its way to the store (or already decided without it)."""

    __slots__ = ("_call", "_degraded", "_principal", "_service")

    def __init__(self, service: AbuseService, principal: Principal, call: StoreCall | None, *,
                 degraded: bool = False) -> None:
        self._service, self._principal, self._call = service, principal, call
        self._degraded = degraded

    async def verdict(self) -> AbuseVerdict:
        """The verdict; applies the store-failure policy (may raise StoreUnavailable)."""
        service = self._service
        if self._call is None:
            return service._degrade() if self._degraded else ALLOW
        try:
            reply = await self._call.reply()
        except StoreError:
            service._failed("abuse_check")
            return service._degrade()
        finally:
            service._breaker.done()
        service._breaker.succeeded()
        return service._verdict(self._principal, reply)

    def abandon(self) -> None:
        """The request failed before its verdict mattered (the check is still recorded)."""
        if self._call is not None:
            self._call.abandon()
            self._service._breaker.done()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
