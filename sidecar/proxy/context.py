"""What one request carries along its way through the proxy."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter


@dataclass(slots=True)
class RequestContext:
    """What one request carries along its way: id, route, timings, outcome."""

    request_id: str
    route: str
    started: float = field(default_factory=perf_counter)
    upstream_s: float = 0.0
    key_id: str = ""
    status: int = 0  # set by the middleware, or once the whole reply was delivered
    reason: str = ""
    model: str = ""          # the model the request named (usage, cost, traces)
