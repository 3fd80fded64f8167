"""Rate-limit response headers with OpenAI's names, so clients' existing backoff works. Pure.

`x-ratelimit-reset-*` is a duration in OpenAI's format ("20ms", "1s", "1.5s", "6m0s",
"1h0m0s"): the time until the tightest window's oldest counted entry leaves it, i.e. until
its remaining count next grows. `Retry-After` (whole seconds, rounded up) and
`retry-after-ms` are sent only on refusals: the time until enough entries have left every
refusing window for this request to fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WindowState:
    """What one window looks like after a decision: its limit, what is left, when it grows."""

    limit: int
    remaining: int
    reset_ms: int


def format_duration(ms: int) -> str:
    """Milliseconds as OpenAI writes them: '0s', '20ms', '1s', '1.5s', '6m0s', '1h2m3s'."""
    ms = max(0, int(ms))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    sec = f"{seconds}.{millis:03d}".rstrip("0").rstrip(".") if millis else str(seconds)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    if minutes:
        return f"{minutes}m{sec}s"
    return f"{sec}s"


def retry_after_seconds(ms: int) -> int:
    """Whole seconds to wait, rounded up (at least 1: a client must not retry at once)."""
    return max(1, -(-int(ms) // 1000))


def tightest(states: Iterable[WindowState]) -> WindowState | None:
    """The window with the least remaining (ties: the one that grows last)."""
    return min(states, key=lambda s: (s.remaining, -s.reset_ms), default=None)


def rate_limit_headers(
    requests: WindowState | None, tokens: WindowState | None, retry_after_ms: int | None = None
) -> dict[str, str]:
    """`x-ratelimit-*` for each kind that has a window, plus `Retry-After` on a refusal."""
    headers: dict[str, str] = {}
    for kind, state in (("requests", requests), ("tokens", tokens)):
        if state is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, state.remaining))
            headers[f"x-ratelimit-reset-{kind}"] = format_duration(state.reset_ms)
    if retry_after_ms is not None:
        headers["Retry-After"] = str(retry_after_seconds(retry_after_ms))
        headers["retry-after-ms"] = str(max(0, int(retry_after_ms)))
    return headers
