"""Failure counts per subject in a fixed one-minute window, kept in a bounded LRU.

The subject is whatever a guesser cannot change cheaply and an owner does not share with it:
a (key id, client address) pair for API keys, a client address for the admin token. Pure
bookkeeping on a caller-supplied monotonic clock: no I/O, no locks (the event loop is the
only writer, and callers count and check without an await in between).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class FailureWindow:
    """At most `size` subjects; each has a count that starts when its first failure is added
    and resets `window_s` later."""

    def __init__(self, limit: int, size: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.size = size
        self.window_s = window_s
        self._entries: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def count(self, subject: Hashable, now: float) -> int:
        """Failures of `subject` in its current window (0 once the window is over)."""
        entry = self._entries.get(subject)
        if entry is None or now - entry[0] > self.window_s:
            return 0
        return entry[1]

    def over(self, subject: Hashable, now: float) -> bool:
        """True when `subject` has used up its failure budget for this window."""
        return self.count(subject, now) >= self.limit

    def add(self, subject: Hashable, now: float) -> int:
        """Count one failure; the subject's count in this window after it."""
        start, count = self._entries.get(subject, (now, 0))
        if now - start > self.window_s:
            start, count = now, 0
        self._entries[subject] = (start, count + 1)
        self._entries.move_to_end(subject)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return count + 1

    def retry_after(self, subject: Hashable, now: float) -> float:
        """Seconds until `subject`'s window is over (0 when it has none)."""
        entry = self._entries.get(subject)
        if entry is None:
            return 0.0
        return max(0.0, entry[0] + self.window_s - now)

    def forget(self, match: Hashable) -> None:
        """Drop `match`, and every tuple subject whose first element is `match`."""
        for subject in [s for s in self._entries
                        if s == match or (isinstance(s, tuple) and s and s[0] == match)]:
            del self._entries[subject]
