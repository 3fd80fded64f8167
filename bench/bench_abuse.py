"""Per-request cost of the abuse check (fingerprint + one abuse.lua call) on a real redis-server.

Usage: python bench/bench_abuse.py [--url redis://127.0.0.1:PORT/0] [--seconds 2]
Without --url it starts its own redis-server on a free port. Reports:
- fingerprint CPU time for a short prompt, a 4 KB prompt and a 100 KB prompt (best of 5, median);
- p50/p99 of `check` alone, of `Limiter.admit` alone and of both gathered (as the proxy runs
  them: one pipelined write), at concurrency 1 and 32, real prompts from 4,096 keys of 64
  tenants (no key near a threshold: the usual case);
- the Redis-side time per abuse.lua call (INFO commandstats): the usual case, and 16 keys far
  over every per-window threshold at once (each request sums its window, reports nothing new).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_limits import _own_redis

from sidecar.abuse import AbuseService
from sidecar.guards.fingerprint import fingerprint
from sidecar.limits import Limiter
from sidecar.metrics import Metrics
from sidecar.model import LimitRule, Principal
from sidecar.settings import AbuseSettings, LimitsSettings, StoreSettings
from sidecar.store.redis import connect

# The real benign prompts the abuse tests ship (sources and licences in their README).
DATA = Path(__file__).resolve().parent.parent / "tests" / "abuse" / "data"


def prompts() -> list[str]:
    out: list[str] = []
    for name in ("mt_bench_questions", "gsm8k_test_questions", "arena_hard_user_prompts"):
        path = DATA / f"{name}.jsonl.gz"
        if path.exists():
            lines = gzip.decompress(path.read_bytes()).splitlines()
            out += [json.loads(line)["text"][:4096] for line in lines]
    return out or [f"Question number {i}: what is {i} squared?" for i in range(2000)]


def fingerprint_cost() -> None:
    base = prompts()[0]
    for label, text in (("30 chars", "What is the capital of France?"),
                        ("4 KB", (base * 64)[:4096]), ("100 KB", (base * 2000)[:100_000])):
        rounds = []
        for _ in range(5):
            n = 2000 if len(text) < 10_000 else 100
            started = time.process_time()
            for _ in range(n):
                fingerprint(text)
            rounds.append((time.process_time() - started) / n * 1e6)
        print(f"fingerprint {label:>8}: best {min(rounds):7.1f} us  median "
              f"{statistics.median(rounds):7.1f} us")


async def measure(url: str, what: str, concurrency: int, seconds: float,
                  settings: AbuseSettings, keys: int = 4096) -> tuple[float, float, float]:
    store = await connect(StoreSettings(url=url, timeout_s=1.0))
    abuse = AbuseService(store, settings, Metrics())
    limiter = Limiter(store, LimitsSettings(key=(LimitRule(60, requests=10**9),)), Metrics())
    texts = prompts()
    latencies: list[float] = []
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    def step(who: Principal, n: int) -> Callable[[], Awaitable[object]]:
        text = texts[n % len(texts)]
        if what == "check":
            return lambda: abuse.check(who, fingerprint(text))
        if what == "admit":
            return lambda: limiter.admit(who, f"req_{n:024x}")
        return lambda: asyncio.gather(limiter.admit(who, f"req_{n:024x}"),
                                      abuse.check(who, fingerprint(text)))

    async def worker(w: int) -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            who = Principal(f"key-{n % keys}", f"tenant-{n % keys % 64}", frozenset())
            call = step(who, n)
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await abuse.check(Principal("warm", "bench", frozenset()), fingerprint("warm up"))
    await limiter.admit(Principal("warm", "bench", frozenset()), "warm")
    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    elapsed = time.perf_counter() - started
    await store.close()
    latencies.sort()
    return (len(latencies) / elapsed, statistics.median(latencies) * 1000,
            latencies[int(len(latencies) * 0.99)] * 1000)


def script_usec(url: str) -> float:
    stats = redis.Redis.from_url(url).info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    fingerprint_cost()
    with tempfile.TemporaryDirectory() as workdir:
        proc = None
        url = args.url
        if url is None:
            proc, url = _own_redis(workdir)
        try:
            client = redis.Redis.from_url(url)
            for concurrency in (1, 32):
                for what in ("admit", "check", "admit+check"):
                    rate, p50, p99 = asyncio.run(
                        measure(url, what, concurrency, args.seconds, AbuseSettings()))
                    print(f"concurrency {concurrency:>2} {what:>11}: {rate:7.0f}/s  "
                          f"p50 {p50:.3f} ms  p99 {p99:.3f} ms")
            flagged = AbuseSettings(key_requests=10, key_distinct=10, key_template=2,
                                    tenant_requests=10, tenant_distinct=10, tenant_template=2)
            for label, settings, keys in (("usual", AbuseSettings(), 4096),
                                          ("16 keys over every threshold", flagged, 16)):
                client.flushall()
                client.config_resetstat()
                asyncio.run(measure(url, "check", 32, args.seconds / 2, settings, keys))
                print(f"redis time per abuse.lua call ({label}): {script_usec(url):.1f} us")
            client.flushall()
            client.config_resetstat()
            asyncio.run(measure(url, "admit", 32, args.seconds / 2, AbuseSettings()))
            print(f"redis time per admit.lua call (for comparison): {script_usec(url):.1f} us")
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
