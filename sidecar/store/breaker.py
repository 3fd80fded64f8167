"""A circuit breaker for store calls: after a failure, skip the store for a short period, then
let exactly one call probe it. An outage then costs one store deadline per period instead of
one per request, and the caller returns to the store on its own once it answers."""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    """Closed (use the store), open (skip it), half-open (one probe in flight)."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._open_until = 0.0
        self._probing = False

    @property
    def is_open(self) -> bool:
        """True from a failure until a call succeeds again."""
        return self._open_until > 0.0

    def allow(self) -> bool:
        """May this call use the store? (Pair every True with `done()`.)"""
        if not self._open_until:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True  # this call is the one probe of the half-open breaker
        return True

    def done(self) -> None:
        """The call that was allowed has finished (either way)."""
        self._probing = False

    def failed(self) -> None:
        self._open_until = self._clock() + self.period_s

    def succeeded(self) -> bool:
        """Close the breaker; True if it was open (the store just came back)."""
        was_open = self._open_until > 0.0
        self._open_until = 0.0
        return was_open
