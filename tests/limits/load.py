"""Request-count load on one principal from separate OS processes (own event loop, store and
Limiter each), with bounded concurrency: thousands of admissions without thousands of
connections. As in `workers.py`, every process warms up and waits at a barrier first.

A process either sends its jobs as fast as `concurrency` allows (`rate=None`) or paces them:
job n is due `n / rate` seconds after the start (late jobs go at once, so the offered total
stays as planned when the machine stalls).
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.managers import SyncManager
from typing import Any

from sidecar.errors import SidecarError
from sidecar.limits import Limiter
from sidecar.metrics import Metrics
from sidecar.model import LimitRule, Principal
from sidecar.settings import LimitsSettings, StoreSettings
from sidecar.store.redis import connect

Outcome = tuple[str, str, int]   # request id, "ok" | error code, Redis ms of the admission (0: refused)
Run = tuple[list[Outcome], float, int]  # outcomes, seconds from release to last reply, store calls


async def _run(url: str, key: tuple[LimitRule, ...], tenant: tuple[LimitRule, ...], ids: list[str],
               concurrency: int, rate: float | None, barrier: Any) -> Run:
    store = await connect(StoreSettings(url=url, timeout_s=10.0, max_connections=concurrency + 4))
    limiter = Limiter(store, LimitsSettings(key=key, tenant=tenant), Metrics())
    who = Principal("key-1", "tenant-1", frozenset({"chat"}))
    # Warm up on another tenant: loads the script and opens connections without using the quota.
    warm = Principal(f"warm-{os.getpid()}", "warm-up", frozenset())
    await limiter.admit(warm, "warm-first")
    await asyncio.gather(*(limiter.admit(warm, f"warm-{i}") for i in range(concurrency)))
    await asyncio.to_thread(barrier.wait)
    jobs = iter(enumerate(ids))
    outcomes: list[Outcome] = []
    started = time.monotonic()

    async def worker() -> None:
        for n, rid in jobs:
            if rate is not None:
                delay = started + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # paces the offered load (not synchronisation)
            try:
                admission = await limiter.admit(who, rid)
            except SidecarError as exc:
                outcomes.append((rid, exc.code, 0))
                continue
            outcomes.append((rid, "ok", admission.redis_time_ms))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return outcomes, time.monotonic() - started, len(ids) - limiter.local_refusals
    finally:
        await store.close()


def _worker(url: str, key: tuple[LimitRule, ...], tenant: tuple[LimitRule, ...], ids: list[str],
            concurrency: int, rate: float | None, barrier: Any) -> Run:
    try:
        return asyncio.run(_run(url, key, tenant, ids, concurrency, rate, barrier))
    except BaseException:
        barrier.abort()  # release the other processes instead of leaving them waiting
        raise


def load_from_processes(url: str, ids_per_process: list[list[str]], *, key: tuple[LimitRule, ...] = (),
                        tenant: tuple[LimitRule, ...] = (), concurrency: int = 32,
                        rate: float | None = None) -> list[Run]:
    """Admit each id list from its own process (all released at once); one Run per process.
    `rate`: requests per second offered by each process (None: as fast as possible)."""
    ctx = get_context("spawn")
    with SyncManager(ctx=ctx) as manager:
        barrier = manager.Barrier(len(ids_per_process))  # type: ignore[attr-defined]
        with ProcessPoolExecutor(len(ids_per_process), mp_context=ctx) as pool:
            futures = [pool.submit(_worker, url, key, tenant, ids, concurrency, rate, barrier)
                       for ids in ids_per_process]
            return [future.result(timeout=120) for future in futures]
