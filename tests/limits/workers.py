"""Limiter load from separate OS processes (each with its own event loop, store and Limiter)."""

from __future__ import annotations

import asyncio
import os
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

Job = tuple[str, int]                       # request id, estimated tokens
Outcome = tuple[str, int, str, int]         # request id, tokens, "ok" | error code, Redis ms


async def _admit_all(url: str, key: tuple[LimitRule, ...], tenant: tuple[LimitRule, ...],
                     jobs: list[Job], barrier: Any) -> list[Outcome]:
    store = await connect(StoreSettings(url=url, timeout_s=10.0, max_connections=len(jobs) + 4))
    limiter = Limiter(store, LimitsSettings(key=key, tenant=tenant), Metrics())
    who = Principal("key-1", "tenant-1", frozenset({"chat"}))
    # Warm up on another tenant: loads the script and opens connections without using the quota.
    warm = Principal(f"warm-{os.getpid()}", "warm-up", frozenset())
    await limiter.admit(warm, "warm-first", 1)  # loads the script (SCRIPT LOAD) once
    await asyncio.gather(*(limiter.admit(warm, f"warm-{rid}", 1) for rid, _ in jobs[:-1]))
    await asyncio.to_thread(barrier.wait)

    async def one(rid: str, tokens: int) -> Outcome:
        try:
            admission = await limiter.admit(who, rid, tokens)
        except SidecarError as exc:
            return rid, tokens, exc.code, 0
        return rid, tokens, "ok", admission.redis_time_ms

    try:
        return list(await asyncio.gather(*(one(rid, tokens) for rid, tokens in jobs)))
    finally:
        await store.close()


def _worker(url: str, key: tuple[LimitRule, ...], tenant: tuple[LimitRule, ...], jobs: list[Job],
            barrier: Any) -> list[Outcome]:
    try:
        return asyncio.run(_admit_all(url, key, tenant, jobs, barrier))
    except BaseException:
        barrier.abort()  # release the other processes instead of leaving them waiting
        raise


def admit_from_processes(url: str, jobs_per_process: list[list[Job]], *,
                         key: tuple[LimitRule, ...] = (), tenant: tuple[LimitRule, ...] = ()
                         ) -> list[Outcome]:
    """Run each job list in its own process, all released at once; every outcome, in no order."""
    ctx = get_context("spawn")
    with SyncManager(ctx=ctx) as manager:
        barrier = manager.Barrier(len(jobs_per_process))  # type: ignore[attr-defined]
        with ProcessPoolExecutor(len(jobs_per_process), mp_context=ctx) as pool:
            futures = [pool.submit(_worker, url, key, tenant, jobs, barrier) for jobs in jobs_per_process]
            return [outcome for future in futures for outcome in future.result(timeout=90)]
