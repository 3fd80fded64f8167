"""Per-process fallback limiter for when the store is down and `on_store_error = "allow"`.

Each process may admit `limit x share` of every enforced window on its own (at least 1 when
the share is above 0), so N processes together stay near N x share of the real limit.
Counts are sliding-window counters (two fixed windows, the previous one weighted by how
much of it still overlaps), two numbers per window: memory is bounded by `max_windows`,
least recently used windows are dropped first. Local monotonic time is fine here: nothing
is shared between processes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sidecar.limits.headers import WindowState
from sidecar.limits.rules import Check


@dataclass(slots=True)
class _Counter:
    start: float  # start of the current fixed window (s)
    current: float
    previous: float


@dataclass(frozen=True, slots=True)
class FallbackDecision:
    """The local verdict: admitted or not, the windows' states, and when to retry (ms)."""

    admitted: bool
    states: tuple[tuple[Check, WindowState], ...]
    refused: tuple[Check, ...]
    retry_ms: int


class FallbackLimiter:
    """Bounded in-memory sliding-window counters, one per (window key)."""

    def __init__(self, share: float, max_windows: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.share = share
        self.max_windows = max_windows
        self._clock = clock
        self._counters: OrderedDict[str, _Counter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counters)

    def local_limit(self, limit: int) -> int:
        """This process's share of a limit."""
        if self.share <= 0:
            return 0
        return max(1, math.floor(limit * self.share))

    def _counter(self, key: str, window_s: int, now: float) -> _Counter:
        counter = self._counters.get(key)
        if counter is None:
            counter = _Counter(now - now % window_s, 0.0, 0.0)
            self._counters[key] = counter
            if len(self._counters) > self.max_windows:
                self._counters.popitem(last=False)
        else:
            self._counters.move_to_end(key)
        elapsed = now - counter.start
        if elapsed >= 2 * window_s:
            counter.start, counter.current, counter.previous = now - now % window_s, 0.0, 0.0
        elif elapsed >= window_s:
            counter.start += window_s
            counter.previous, counter.current = counter.current, 0.0
        return counter

    @staticmethod
    def _used(counter: _Counter, window_s: int, now: float) -> float:
        overlap = 1.0 - (now - counter.start) / window_s
        return counter.previous * max(0.0, overlap) + counter.current

    def admit(self, checks: Sequence[Check], cost: int, money: int = 0) -> FallbackDecision:
        """Check every enforced window locally; record in all of them only if all pass."""
        now = self._clock()
        seen: list[tuple[Check, _Counter, float, int]] = []
        refused: list[Check] = []
        retry_ms = 0
        for check in checks:
            if check.shadow:
                continue
            counter = self._counter(check.keys[0], check.window_s, now)
            used = self._used(counter, check.window_s, now)
            amount = 1 if check.kind == "requests" else cost if check.kind == "tokens" else money
            limit = self.local_limit(check.limit)
            if used + amount > limit:
                refused.append(check)
                # The weighted previous window fades by the end of the current one.
                retry_ms = max(retry_ms, int((counter.start + check.window_s - now) * 1000) + 1)
            seen.append((check, counter, used, limit))
        admitted = not refused
        states = []
        for check, counter, used, limit in seen:
            amount = 1 if check.kind == "requests" else cost if check.kind == "tokens" else money
            if admitted:
                counter.current += amount
                used += amount
            reset_ms = int((counter.start + check.window_s - now) * 1000)
            states.append((check, WindowState(limit, limit - math.ceil(used), reset_ms)))
        return FallbackDecision(admitted, tuple(states), tuple(refused), retry_ms)

    def adjust(self, keys: Sequence[str], delta: int) -> None:
        """Settle a fallback reservation: add `delta` (tokens or nano-dollars) to each window's
        current count."""
        for key in keys:
            counter = self._counters.get(key)
            if counter is not None:
                counter.current = max(0.0, counter.current + delta)
