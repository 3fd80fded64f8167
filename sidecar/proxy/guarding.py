"""Run a policy's input pipeline on a request: slow guards off the event loop, then count, log
and raise.

The guards only compute and `guards/pipeline.py` decides what their verdicts mean; this module
is the HTTP side of it: it applies the composed edits to the typed request, counts every
shadow and flag outcome once (`sidecar_blocked_requests_total{reason="shadow:..."}`), times
every guard, logs without prompt text, and turns an enforced block into the client's error.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter

from sidecar.errors import InputTooLong, PromptInjectionDetected, RequestBlocked, SidecarError
from sidecar.guards.base import BLOCK, FLAG, MODIFY, RequestView
from sidecar.guards.builtin import INJECTION, INPUT_TOO_LONG, REDACTED, SANITIZED
from sidecar.guards.pipeline import SHADOW, Record, Run, Step
from sidecar.log import log_fields
from sidecar.metrics import Metrics
from sidecar.model import Finding, Verdict
from sidecar.policies import ActivePolicy
from sidecar.proxy.context import RequestContext
from sidecar.proxy.requests import ParsedRequest

log = logging.getLogger("sidecar.guards")
GUARD_ERROR = "guard_error"
_LABEL = re.compile(r"[a-z0-9_.:-]{1,64}")


def request_view(parsed: ParsedRequest) -> RequestView:
    messages = parsed.body.get("messages" if parsed.route != "responses" else "input")
    count = len(messages) if isinstance(messages, list) else 0  # Responses: input items
    return RequestView(parsed.route, tuple(parsed.slots), tuple(parsed.groups), count)


def reason_label(reason: str) -> str:
    """A metric label from a guard's reason: bounded, never free text from a plug-in."""
    return reason if _LABEL.fullmatch(reason) else "blocked_by_policy"


def count_findings(metrics: Metrics, findings: Sequence[Finding]) -> None:
    if not findings:
        return  # the usual case: no Counter to build
    for kind, n in Counter(f.kind for f in findings).items():
        metrics.redactions.labels(kind).inc(n)


class GuardRunner:
    """The request path's side of the guard pipeline; one per process."""

    def __init__(self, metrics: Metrics, slow_workers: int = 2) -> None:
        self.metrics = metrics
        self._pool: ThreadPoolExecutor | None = None
        self._slow_workers = slow_workers

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def check(self, policy: ActivePolicy, parsed: ParsedRequest, ctx: RequestContext) -> None:
        """Run the policy's input guards over the request; edits land in `parsed`; an enforced
        block raises the client's error."""
        run = Run(request_view(parsed))
        for step in policy.pipeline.input_steps():
            started = perf_counter()
            if step.slow:
                stop = await self._run_slow(step, run, started)
            else:
                stop = run.apply(step, self._call(step, run.view), perf_counter() - started)
            if stop:
                break
        for index, text in run.edits.items():
            parsed.replace(index, text)
        self.account(run.records, ctx, parsed)
        if run.blocked is not None:
            raise error_for(run.blocked.verdict)

    def _call(self, step: Step, view: RequestView) -> Verdict:
        try:
            return step.guard.check(view)
        except Exception as exc:  # a guard's bug: its step's on_timeout policy decides
            log_fields(log, logging.ERROR, "guard failed", guard=step.name, error=type(exc).__name__)
            return Verdict(BLOCK if step.on_timeout == BLOCK else FLAG, reason=GUARD_ERROR)

    async def _run_slow(self, step: Step, run: Run, started: float) -> bool:
        """A slow guard in the bounded pool, within its time budget."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._slow_workers, thread_name_prefix="slow-guard")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._call, step, run.view)
        try:
            verdict = await asyncio.wait_for(future, step.budget_s)
        except TimeoutError:
            return run.timed_out(step, perf_counter() - started)
        return run.apply(step, verdict, perf_counter() - started)

    def account(self, records: Sequence[Record], ctx: RequestContext, parsed: ParsedRequest) -> None:
        """Count and log every outcome once (an enforced block is counted where it is answered)."""
        metrics = self.metrics
        for record in records:
            metrics.guard_duration.labels(record.guard).observe(record.seconds)
            verdict = record.verdict
            outcome = record.outcome
            if outcome == MODIFY:
                if verdict.reason == SANITIZED:
                    metrics.sanitized.inc()
                elif verdict.reason == REDACTED:
                    count_findings(metrics, verdict.findings)
                continue
            if outcome not in (SHADOW, FLAG, BLOCK):
                continue
            reason = reason_label(verdict.reason)
            if outcome != BLOCK:
                metrics.blocked.labels(ctx.route, f"{outcome}:{reason}").inc()
            slot = parsed.slots[verdict.slot] if verdict.slot is not None else None
            message = {BLOCK: "request blocked", SHADOW: "request would be blocked (shadow)",
                       FLAG: "request flagged"}[outcome]
            log_fields(log, logging.WARNING, message, request_id=ctx.request_id, key_id=ctx.key_id,
                       route=ctx.route, guard=record.guard, reason=reason,
                       score=round(verdict.score, 4), categories=list(verdict.categories),
                       slot=slot.path if slot else None, role=slot.role if slot else None)


def error_for(verdict: Verdict) -> SidecarError:
    """The client's error for an enforced block (never naming the text that caused it)."""
    if verdict.reason == INJECTION:
        return PromptInjectionDetected()
    if verdict.reason == INPUT_TOO_LONG:
        return InputTooLong(verdict.detail) if verdict.detail else InputTooLong()
    error = RequestBlocked()
    error.reason = reason_label(verdict.reason)
    return error
