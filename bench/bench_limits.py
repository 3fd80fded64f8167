"""Admissions per second and p50/p99 latency of `Limiter.admit` against a real redis-server.

Usage: python bench/bench_limits.py [--url redis://127.0.0.1:PORT/0] [--seconds 3] [--log]
Without --url it starts its own redis-server on a free port. Concurrency 1 and 32; each
admission checks a key window (requests + tokens) and a tenant window, as in production.
The request limits are far above 1,000 per window, so they are bucketed counters; `--log`
measures the same load on per-request logs (as every request limit was before RL-4).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import redis

from sidecar.errors import SidecarError
from sidecar.limits import Limiter, rules
from sidecar.metrics import Metrics
from sidecar.model import LimitRule, Principal
from sidecar.settings import LimitsSettings, StoreSettings
from sidecar.store.redis import connect


def _evalsha_usec(url: str) -> tuple[int, int]:
    """EVALSHA calls and Redis CPU microseconds spent in them so far (INFO commandstats): the
    server's cost per admission, steadier than throughput on a shared machine."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def run(url: str, concurrency: int, seconds: float) -> tuple[float, float, float, float]:
    store = await connect(StoreSettings(url=url, timeout_s=1.0))
    settings = LimitsSettings(key=(LimitRule(60, requests=10**9, tokens=10**12),),
                              tenant=(LimitRule(3600, requests=10**9),))
    limiter = Limiter(store, settings, Metrics())
    latencies: list[float] = []
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        who = Principal(f"key-{w % 8}", "bench", frozenset())
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await limiter.admit(who, f"req_{next(counter):024x}", 500)
            except SidecarError:
                pass
            latencies.append(time.perf_counter() - started)

    await limiter.admit(Principal("warm", "bench", frozenset()), "warm", 1)
    calls, usec = _evalsha_usec(url)
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    calls_after, usec_after = _evalsha_usec(url)
    await store.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    redis_us = (usec_after - usec) / max(1, calls_after - calls)
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000, redis_us


def _own_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port),
                             "--save", "", "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--log", action="store_true",
                        help="keep per-request logs for every request limit (no counters)")
    args = parser.parse_args()
    if args.log:
        rules.COUNTER_ABOVE = 10**18
    with tempfile.TemporaryDirectory() as workdir:
        proc = None
        url = args.url
        if url is None:
            proc, url = _own_redis(workdir)
        try:
            for concurrency in (1, 32):
                rate, p50, p99, redis_us = asyncio.run(run(url, concurrency, args.seconds))
                print(f"concurrency {concurrency:>2}: {rate:8.0f} admissions/s  "
                      f"p50 {p50:.3f} ms  p99 {p99:.3f} ms  Redis {redis_us:.1f} us/admission")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
