"""Redis commands per proxied request, counted by the server itself (INFO commandstats).

Every command counts, those a Lua script runs included (that is where Redis spends its CPU), so
one EVALSHA that runs 12 commands costs 13 here. `make bench` prints the total per request for
its own redis-server; run this file for the breakdown by command:

    python bench/redis_cost.py [--requests 2000] [--concurrency 8] [--fixed-body]

It starts a redis-server, the mock provider and the sidecar (every guard on, abuse checks, a
key with a request limit and a token budget, as `make bench`), sends the requests with a
different prompt in each (or one fixed body), waits for the settlements, and prints the
commands per request, by command, and the redis-server's CPU time per request (INFO cpu).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import BODY, bench_headers, free_port, process, varied_body, wait_http

PY = sys.executable


def command_counts(port: int) -> Counter[str]:
    """Calls per command so far on the redis-server at `port` (INFO commandstats)."""
    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    # redis-py parses `cmdstat_evalsha:calls=3,...` into {"cmdstat_evalsha": {"calls": 3, ...}}
    return Counter({name.removeprefix("cmdstat_").upper(): int(v["calls"])
                    for name, v in stats.items()})


def command_usec(port: int) -> Counter[str]:
    """Microseconds spent per command so far (INFO commandstats; a script's time includes the
    commands it runs)."""
    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return Counter({name.removeprefix("cmdstat_").upper(): int(v["usec"])
                    for name, v in stats.items()})


def cpu_seconds(port: int) -> float:
    """CPU time the redis-server at `port` has used so far (INFO cpu: user + system): what
    the requests cost Redis, networking included."""
    client = redis.Redis(port=port)
    try:
        cpu = client.info("cpu")
    finally:
        client.close()
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def per_request(before: Counter[str], after: Counter[str], requests: int,
                ignore: tuple[str, ...] = ("INFO",)) -> dict[str, float]:
    """Commands per request by command (the INFO calls that measure it left out)."""
    delta = after - before
    return {name: count / requests for name, count in sorted(delta.items(), key=lambda x: -x[1])
            if name not in ignore}


async def send(url: str, headers: dict[str, str], requests: int, concurrency: int,
               fixed: bool) -> int:
    """POST `requests` chat requests; returns how many got a 200."""
    numbers = iter(range(requests))
    ok = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal ok
        for n in numbers:
            body = BODY if fixed else varied_body(n)
            async with session.post(url + "/v1/chat/completions", data=body,
                                    headers={**headers, "Content-Type": "application/json"}) as r:
                await r.read()
                ok += r.status == 200

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fixed-body", action="store_true", help="the same body in every request")
    args = parser.parse_args()
    mock_port, side_port, metrics_port, redis_port = (free_port() for _ in range(4))
    workdir = tempfile.mkdtemp(prefix="sidecar-redis-cost-")
    env = {
        "SIDECAR_LISTEN": f"127.0.0.1:{side_port}",
        "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "SIDECAR_UPSTREAM_URL": f"http://127.0.0.1:{mock_port}",
        "SIDECAR_STORE_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SIDECAR_LOG_LEVEL": "ERROR",
        "OPENAI_API_KEY": "bench-provider-key",
    }
    with process(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no",
                  "--dir", workdir]), \
         process([PY, "-m", "sidecar", "mock-upstream", "--port", str(mock_port)]), \
         process([PY, "-m", "sidecar", "serve"], env=env):
        wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        headers = bench_headers(env)
        url = f"http://127.0.0.1:{side_port}"
        asyncio.run(send(url, headers, 50, 4, args.fixed_body))  # warm-up: scripts loaded, keys exist
        time.sleep(0.2)
        before, cpu = command_counts(redis_port), cpu_seconds(redis_port)
        usec = command_usec(redis_port)
        ok = asyncio.run(send(url, headers, args.requests, args.concurrency, args.fixed_body))
        time.sleep(0.5)  # settlements are sent after the replies
        after, cpu = command_counts(redis_port), cpu_seconds(redis_port) - cpu
        usec = command_usec(redis_port) - usec
    rows = per_request(before, after, args.requests)
    print(json.dumps({"requests": args.requests, "ok": ok, "body": "fixed" if args.fixed_body
                      else "varied", "commands_per_request": round(sum(rows.values()), 2),
                      "redis_cpu_us_per_request": round(cpu / args.requests * 1e6, 1),
                      "by_command": {k: round(v, 2) for k, v in rows.items()},
                      "usec_per_request_by_command": {
                          k: round(v / args.requests, 1) for k, v in usec.most_common()
                          if k != "INFO"}}, indent=1))
    if ok != args.requests:
        sys.exit(f"{args.requests - ok} requests failed")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
