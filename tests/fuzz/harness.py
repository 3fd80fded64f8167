"""Shared pieces of the fuzz tests: bounded hypothesis profiles, JSON strategies, the error schema.

The HTTP fuzzers drive a real sidecar (`make_sidecar`) from hypothesis running in a worker
thread: each example schedules its request on the test's event loop and waits for the answer,
so one sidecar serves every example and no event loop is nested.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Deterministic and bounded: the same examples on every run, no example database, no deadline
# (a loaded CI box must not turn slowness into a failure; the example count bounds the time).
FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))


def fuzz(examples: int) -> settings:
    """FUZZ with a fixed number of examples."""
    return settings(FUZZ, max_examples=examples)


ERROR_FIELDS = {"message", "type", "code", "request_id"}
REQUEST_TIMEOUT_S = 20.0

# JSON scalars as a client could send them, including the ones that break naive parsers.
json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


def dumps(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON text of `value` as Python writes it (NaN and Infinity become bare literals)."""
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(has_non_finite(v) for v in value)
    return False


def assert_answer(status: int, body: bytes, content_type: str) -> None:
    """A 2xx, or a 4xx with exactly the OpenAI error schema; never a 5xx or a traceback."""
    assert 200 <= status < 500 and not 300 <= status < 400, (status, body[:300])
    assert b"Traceback" not in body and b'File "' not in body, body[:300]
    if status >= 400:
        assert content_type == "application/json", (status, content_type, body[:300])
        error_body = json.loads(body)
        assert set(error_body) == {"error"}, body[:300]
        error = error_body["error"]
        assert set(error) == ERROR_FIELDS, body[:300]
        assert all(isinstance(error[f], str) for f in ERROR_FIELDS), body[:300]
        assert error["request_id"].startswith("req_"), body[:300]


class LoopBridge:
    """Runs coroutines on the test's event loop from hypothesis' worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(REQUEST_TIMEOUT_S)


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    """POST raw bytes; the status, whole body and content type of the answer."""
    async with session.post(url, data=body, headers=headers or {"Content-Type": "application/json"},
                            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as response:
        return response.status, await response.read(), response.content_type


async def in_thread(prop: Callable[[], None]) -> None:
    """Run a hypothesis property in a worker thread, so the event loop keeps serving."""
    await asyncio.to_thread(prop)
