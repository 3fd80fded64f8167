"""Admission against every limit that applies, in one script call, and token settlement.

`admit` runs `admit.lua` once: the script trims, checks and (only if every enforced window
passes) records the request, all on Redis time. Refusals raise `RateLimitExceeded` or
`TokenQuotaExceeded` carrying OpenAI-style headers. When the store fails the configured
policy applies: `deny` raises `StoreUnavailable`, `allow` falls back to a bounded
in-process limiter and counts every request it lets through. A short circuit breaker keeps
requests off a store that just failed (one probe at a time), so an outage costs at most one
store deadline per breaker period, and the limiter returns to the store on its own.

A refusal by request-count windows is remembered per principal until the first refusing
window frees a slot: a client hammering past its limit costs no store call until then
(see docs/limits.md), and what is admitted stays exact (those windows cannot admit earlier).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sidecar.errors import RateLimitExceeded, StoreUnavailable, TokenQuotaExceeded
from sidecar.limits.fallback import FallbackLimiter
from sidecar.limits.headers import WindowState, rate_limit_headers, retry_after_seconds, tightest
from sidecar.limits.rules import Check, Plan, build_plan
from sidecar.metrics import Metrics
from sidecar.model import Principal
from sidecar.settings import LimitsSettings
from sidecar.store.breaker import CircuitBreaker
from sidecar.store.redis import Store, StoreCall, StoreError

SLACK_MS = 1000        # every window key lives window + 1 s
BREAKER_S = 0.5        # after a store failure, skip the store this long (then probe once)
MAX_PLANS = 4096       # cached per-principal plans
MAX_REQUEST_ID = 256

_FITS, _OVER, _NEVER = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: its headers, what it reserved and where, for settle/refund."""

    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    reserved_tokens: int = 0
    token_keys: tuple[str, ...] = ()          # (reservations, amounts) pairs to settle
    degraded: bool = False                    # admitted by the in-process fallback
    shadow_refused: tuple[str, ...] = ()      # labels of shadow rules that would have refused
    redis_time_ms: int = 0                    # Redis TIME of the admission (0: no store call)
    reserved_cost: int = 0                    # nano-dollars reserved in the cost windows
    cost_keys: tuple[str, ...] = ()           # their (reservations, amounts) pairs


@dataclass(slots=True)
class _Denial:
    """A request-count refusal remembered until its windows can admit again (RL-7): until then
    every request of the same principal is refused without a store call."""

    until: float                              # clock time the first refusing window frees a slot
    refused: list[tuple[Check, int]]
    requests: list[WindowState]
    tokens: list[WindowState]


def _window_text(window_s: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if window_s % size == 0:
            count = window_s // size
            return f"{unit}" if count == 1 else f"{count} {unit}s"
    return f"{window_s} seconds"


def _dollars(nusd: int) -> str:
    return f"${nusd / 1e9:,.2f}" if nusd >= 10_000_000 else f"${nusd / 1e9:.6f}"


def _whose(check: Check) -> str:
    return "this API key" if check.level == "key" else "this tenant"


class Limiter:
    """Sliding-window request limits and token budgets for principals, shared through the store."""

    def __init__(self, store: Store, settings: LimitsSettings, metrics: Metrics, *,
                 breaker_s: float = BREAKER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.fallback = FallbackLimiter(settings.fallback_share)
        self.shadow_refusals = 0  # admitted requests a shadow rule would have refused
        self._breaker = CircuitBreaker(breaker_s, clock)
        self._clock = clock
        self._plans: dict[tuple[str, str, Any], Plan] = {}
        self._denied: dict[int, _Denial] = {}  # by id() of a plan in self._plans
        self.local_refusals = 0  # refusals answered from the denial cache (no store call)

    # -- policy -----------------------------------------------------------------------------
    def plan(self, principal: Principal) -> Plan:
        """The checks of a principal (cached: rules change only with the key record)."""
        cache_key = (principal.tenant, principal.limit_id, principal.limits)
        plan = self._plans.get(cache_key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
                self._denied.clear()
            plan = self._plans[cache_key] = build_plan(principal, self.settings)
        return plan

    # -- admission --------------------------------------------------------------------------
    async def admit(self, principal: Principal, request_id: str, estimated_tokens: int = 0,
                    estimated_cost: int = 0) -> Admission:
        """Admit one request or raise a 429 (or 503 when the store is down and policy denies).
        `estimated_cost` (nano-dollars) is reserved in the cost windows, if any."""
        if not request_id or len(request_id) > MAX_REQUEST_ID:
            raise ValueError("request_id must be 1-256 characters")
        plan = self.plan(principal)
        if not plan.checks:
            return Admission(request_id)
        cost = max(0, int(estimated_tokens)) if plan.has_tokens else 0
        money = max(0, int(estimated_cost)) if plan.has_cost else 0
        self._refuse_if_never_fits(plan, cost, money)
        if self._denied:
            self._refuse_if_denied(plan)
        if not self._use_store():
            return self._degrade(plan, request_id, cost, money)
        try:
            reply = await self.store.run("admit", (plan.packed_keys,),
                                         (request_id, cost, SLACK_MS, money, plan.packed_argv))
        except StoreError:
            self._store_failed("limits_admit")
            return self._degrade(plan, request_id, cost, money)
        finally:
            self._breaker.done()
        self._store_ok()
        return self._decide(plan, request_id, cost, money, reply)

    @staticmethod
    def _refuse_if_never_fits(plan: Plan, cost: int, money: int = 0) -> None:
        """A request larger than a whole enforced budget is refused at once, without a retry time."""
        for check in plan.checks:
            if check.kind == "tokens" and not check.shadow and cost > check.limit:
                raise TokenQuotaExceeded(
                    f"This request may use up to {cost} tokens, more than the whole budget of "
                    f"{check.limit} tokens per {_window_text(check.window_s)} for {_whose(check)}; "
                    "it can never be admitted. Lower max_tokens or shorten the input.")
            if check.kind == "cost" and not check.shadow and money > check.limit:
                raise TokenQuotaExceeded(
                    f"This request may cost up to {_dollars(money)}, more than the whole budget of "
                    f"{_dollars(check.limit)} per {_window_text(check.window_s)} for {_whose(check)}; "
                    "it can never be admitted. Lower max_tokens or shorten the input.")

    def _decide(self, plan: Plan, request_id: str, cost: int, money: int,
                reply: Sequence[Any]) -> Admission:
        admitted = int(reply[0]) == 1
        requests: list[WindowState] = []
        tokens: list[WindowState] = []
        refused: list[tuple[Check, int]] = []
        shadow: list[str] = []
        for i, check in enumerate(plan.checks):
            state, used, reset_ms, retry_ms = (int(v) for v in reply[2 + 4 * i: 6 + 4 * i])
            if check.shadow:
                if state != _FITS:
                    shadow.append(check.label)
                continue
            window = WindowState(check.limit, check.limit - used, reset_ms)
            if check.kind != "cost":  # the rate-limit headers speak of requests and tokens
                (requests if check.kind == "requests" else tokens).append(window)
            if state != _FITS:
                refused.append((check, retry_ms))
        if admitted:
            self.shadow_refusals += len(shadow)
            headers = rate_limit_headers(tightest(requests), tightest(tokens))
            return Admission(request_id, headers, cost, plan.token_keys, False, tuple(shadow),
                             int(reply[1]), money, plan.cost_keys)
        retry_ms = max(ms for _, ms in refused)
        if all(check.kind == "requests" for check, _ in refused):
            # Request windows free up only as entries age out (other sidecars only fill them),
            # so nothing of this plan can be admitted before retry_ms: answer locally till then.
            # Token refusals depend on each request's cost and on settlements: not remembered.
            self._denied[id(plan)] = _Denial(self._clock() + retry_ms / 1000, refused, requests,
                                             tokens)
        headers = rate_limit_headers(tightest(requests), tightest(tokens), retry_ms)
        self._raise_refusal(refused, retry_ms, headers)

    def refuse_if_denied(self, principal: Principal) -> None:
        """Raise the remembered refusal while this principal's request windows are full (no store
        call): the proxy asks before sending anything else about the request to the store."""
        if self._denied:
            self._refuse_if_denied(self.plan(principal))

    def _refuse_if_denied(self, plan: Plan) -> None:
        denial = self._denied.get(id(plan))
        if denial is None:
            return
        left_ms = int((denial.until - self._clock()) * 1000)
        if left_ms <= 0:
            del self._denied[id(plan)]
            return
        self.local_refusals += 1
        # The same refusal as the store's, with the time that has passed taken off.
        age_ms = max(ms for _, ms in denial.refused) - left_ms
        requests, tokens = ([WindowState(w.limit, w.remaining, max(0, w.reset_ms - age_ms))
                             for w in windows] for windows in (denial.requests, denial.tokens))
        refused = [(check, max(0, ms - age_ms)) for check, ms in denial.refused]
        headers = rate_limit_headers(tightest(requests), tightest(tokens), left_ms)
        self._raise_refusal(refused, left_ms, headers)

    @staticmethod
    def _raise_refusal(refused: Sequence[tuple[Check, int]], retry_ms: int,
                       headers: dict[str, str]) -> NoReturn:
        check = next((c for c, _ in refused if c.kind == "requests"), refused[0][0])
        wait = retry_after_seconds(retry_ms)
        if check.kind == "requests":
            raise RateLimitExceeded(
                f"Rate limit reached: {check.limit} requests per {_window_text(check.window_s)} "
                f"for {_whose(check)}. Retry after {wait} s.", headers=headers)
        if check.kind == "cost":
            raise TokenQuotaExceeded(
                f"Cost budget reached: {_dollars(check.limit)} per {_window_text(check.window_s)} "
                f"for {_whose(check)}. Retry after {wait} s.", headers=headers)
        raise TokenQuotaExceeded(
            f"Token budget reached: {check.limit} tokens per {_window_text(check.window_s)} "
            f"for {_whose(check)}. Retry after {wait} s.", headers=headers)

    # -- settlement -------------------------------------------------------------------------
    async def settle(self, admission: Admission, actual_tokens: int, actual_cost: int = 0) -> None:
        """Replace the reservation with the provider's actual usage in every token window (and
        its cost, in nano-dollars, in every cost window)."""
        await self._settle(admission, actual_tokens, "limits_settle", actual_cost)

    async def refund(self, admission: Admission) -> None:
        """Release the reservation (the upstream failed): nothing stays recorded for its tokens."""
        await self._settle(admission, 0, "limits_refund")

    async def _settle(self, admission: Admission, amount: int, op: str, money: int = 0) -> None:
        call = self._start_settle(admission, amount, op, money)
        if call is None:
            return
        try:
            await call.reply()
        except StoreError as error:
            self._settled(op, error)
        except BaseException:
            self._breaker.done()  # cancelled: no outcome to book, but the probe is over
            raise
        else:
            self._settled(op, None)

    def settle_soon(self, admission: Admission, actual_tokens: int,
                    actual_cost: int = 0) -> asyncio.Future[Any] | None:
        """`settle` for a caller that does not wait: the call leaves with the next write (within
        a few ms: the next request's admission, usually) and its outcome is booked when the reply
        arrives, without a task. Returns what to wait for at shutdown."""
        call = self._start_settle(admission, actual_tokens, "limits_settle", actual_cost,
                                  lazy=True)
        if call is None:
            return None
        return call.when_done(lambda error: self._settled("limits_settle", error))

    def _start_settle(self, admission: Admission, amount: int, op: str,
                      money: int = 0, *, lazy: bool = False) -> StoreCall | None:
        """Send a settlement now (`lazy`: with the next write, within a few ms); None when
        nothing goes to the store."""
        amount = max(0, int(amount))
        money = max(0, int(money))
        if not admission.token_keys and not admission.cost_keys:
            return None
        if amount > admission.reserved_tokens:
            # Charged in full (the provider did spend it), but never silently: the reservation
            # was the promise the budget check relied on.
            self.metrics.budget_overrun_tokens.inc(amount - admission.reserved_tokens)
        if admission.degraded:
            self.fallback.adjust(admission.token_keys[::2], amount - admission.reserved_tokens)
            self.fallback.adjust(admission.cost_keys[::2], money - admission.reserved_cost)
            return None
        if not self._use_store():
            # The reservation stays at its estimate until it leaves the window (never under-counts).
            self.metrics.store_errors.labels(op).inc()
            return None
        if not admission.cost_keys:
            return self.store.start("settle", admission.token_keys, (admission.request_id, amount),
                                    lazy=lazy)
        return self.store.start("settle", admission.token_keys + admission.cost_keys,
                                (admission.request_id, amount, len(admission.token_keys) // 2, money),
                                lazy=lazy)

    def _settled(self, op: str, error: StoreError | None) -> None:
        """Book a settlement's outcome (the breaker was asked when it was sent)."""
        self._breaker.done()
        if error is None:
            self._store_ok()
        else:
            self._store_failed(op)

    # -- store failure policy ---------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        """True while the store is considered down (the breaker is open)."""
        return self._breaker.is_open

    def _use_store(self) -> bool:
        return self._breaker.allow()

    def _store_failed(self, op: str) -> None:
        self.metrics.store_errors.labels(op).inc()
        self._breaker.failed()
        if self.settings.on_store_error == "allow":
            self.metrics.degraded.set(1)

    def _store_ok(self) -> None:
        if self._breaker.succeeded():
            self.metrics.degraded.set(0)

    def _degrade(self, plan: Plan, request_id: str, cost: int, money: int = 0) -> Admission:
        if self.settings.on_store_error == "deny":
            raise StoreUnavailable(headers={"Retry-After": "1"})
        decision = self.fallback.admit(plan.checks, cost, money)
        requests = [s for c, s in decision.states if c.kind == "requests"]
        tokens = [s for c, s in decision.states if c.kind == "tokens"]
        if not decision.admitted:
            headers = rate_limit_headers(tightest(requests), tightest(tokens), decision.retry_ms)
            self._raise_refusal([(c, decision.retry_ms) for c in decision.refused],
                                decision.retry_ms, headers)
        self.metrics.degraded_requests.labels("limits").inc()
        headers = rate_limit_headers(tightest(requests), tightest(tokens))
        return Admission(request_id, headers, cost, plan.token_keys, True, reserved_cost=money,
                         cost_keys=plan.cost_keys)
