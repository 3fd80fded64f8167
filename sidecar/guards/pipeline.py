"""The one place that turns guard verdicts into behaviour.

A `Pipeline` is the ordered list of guards one policy names, each as a `Step` with its mode
(`enforce` / `shadow`), an optional action override and, for a slow guard, a time budget and
what to do when it runs out. `Run` applies verdicts one at a time: it composes edits (a later
guard reads the text an earlier one changed), records every outcome once with its duration,
and stops at the first enforced block. The request path (asynchronously, slow guards off the
event loop), `sidecar scan` and conversation replay all drive the same `Run`, so they cannot
disagree. Pure: no I/O, no metrics; callers count `Run.records`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from time import perf_counter

from sidecar.guards.base import ALLOW, BLOCK, FLAG, MODIFY, Guard, RequestView, Stage
from sidecar.model import Verdict

ENFORCE = "enforce"
SHADOW = "shadow"
MODES = (ENFORCE, SHADOW)
TIMED_OUT = "guard_timeout"


@dataclass(frozen=True, slots=True)
class Step:
    """One guard as a policy configures it."""

    guard: Guard
    mode: str = ENFORCE
    action: str = ""  # "" keeps the guard's own verdict; "flag" turns blocks and edits into flags
    budget_s: float = 0.25  # slow guards only: time allowed off the event loop
    on_timeout: str = ALLOW  # slow guards only: "allow" or "block" when the budget runs out

    @property
    def name(self) -> str:
        return self.guard.name

    @property
    def slow(self) -> bool:
        return bool(getattr(self.guard, "slow", False))


@dataclass(frozen=True, slots=True)
class Record:
    """What one guard decided and what the pipeline did with it.

    `outcome` is "allow", "modify", "flag", "shadow" (would have blocked or changed the text)
    or "block" (enforced: the request stops here).
    """

    guard: str
    verdict: Verdict
    outcome: str
    seconds: float


@dataclass(slots=True)
class Run:
    """One pass of a pipeline over one request."""

    view: RequestView
    edits: dict[int, str] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    blocked: Record | None = None

    def apply(self, step: Step, verdict: Verdict, seconds: float) -> bool:
        """Apply one guard's verdict by its step's mode and action; True when the run stops."""
        action = verdict.action
        if step.action == FLAG and action in (BLOCK, MODIFY):
            action = FLAG
        if action == ALLOW:
            outcome = ALLOW
        elif step.mode == SHADOW and action in (BLOCK, MODIFY, FLAG):
            outcome = SHADOW
        elif action == MODIFY:
            outcome = MODIFY
            for index, text in verdict.edits:
                self.edits[index] = text
                self.view = self.view.with_text(index, text)
        elif action == FLAG:
            outcome = FLAG
        else:
            outcome = BLOCK
        record = Record(step.name, verdict, outcome, seconds)
        self.records.append(record)
        if outcome == BLOCK:
            self.blocked = record
            return True
        return False

    def timed_out(self, step: Step, seconds: float) -> bool:
        """A slow guard ran past its budget: its step's `on_timeout` decides."""
        verdict = Verdict(BLOCK if step.on_timeout == BLOCK else FLAG, reason=TIMED_OUT)
        return self.apply(step, verdict, seconds)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """The guards of one policy, in order."""

    policy: str
    steps: tuple[Step, ...]

    def input_steps(self) -> Iterator[Step]:
        return (s for s in self.steps if s.guard.stage is Stage.INPUT)

    def output_steps(self) -> Iterator[Step]:
        return (s for s in self.steps if s.guard.stage is Stage.OUTPUT)

    def run(self, view: RequestView) -> Run:
        """Every input guard in order, slow ones included (for the CLI and replay)."""
        run = Run(view)
        for step in self.input_steps():
            started = perf_counter()
            verdict = step.guard.check(run.view)
            if run.apply(step, verdict, perf_counter() - started):
                break
        return run
