"""Valid-request latency while 200 concurrent requests present wrong secrets for a real key id.

Starts a redis-server, the mock provider and the sidecar (RFC 9106 argon2 parameters) as
processes, then measures p50/p99 of valid requests idle and during the attack (issue 3).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run_bench import free_port, process, wait_http  # noqa: E402
from sidecar.auth.keyformat import ALPHABET, CHECKSUM_LEN  # noqa: E402


def checksum(body: str) -> str:
    number, digits = zlib.crc32(body.encode()), []
    for _ in range(CHECKSUM_LEN):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


async def latencies(session: aiohttp.ClientSession, url: str, key: str, n: int, conc: int) -> list[float]:
    out: list[float] = []
    sem = asyncio.Semaphore(conc)

    async def one() -> None:
        async with sem:
            t = time.perf_counter()
            async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200, r.status
                await r.read()
            out.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(one() for _ in range(n)))
    return out


async def attack(host: str, port: int, key_id: str, rounds: int) -> int:
    """Waves of 200 concurrent requests, each with its own wrong secret (valid checksum), on 200
    kept-alive raw connections: the requests are pre-encoded bytes, so the attacker costs
    little CPU next to the sidecar's (an aiohttp client would compete with the measured one)."""
    conns = [await asyncio.open_connection(host, port) for _ in range(200)]
    refused = 0
    try:
        for r in range(rounds):
            heads = []
            for i in range(200):
                body = f"sks_{key_id}_" + f"{r:05d}{i:038d}"
                heads.append(f"GET /v1/models HTTP/1.1\r\nHost: {host}\r\n"
                             f"Authorization: Bearer {body}_{checksum(body)}\r\n\r\n".encode())
            for (_, writer), head in zip(conns, heads, strict=True):
                writer.write(head)

            async def answer(reader: asyncio.StreamReader) -> bool:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                return head.startswith(b"HTTP/1.1 401")

            refused += sum(await asyncio.gather(*(answer(reader) for reader, _ in conns)))
    finally:
        for _, writer in conns:
            writer.close()
    return refused


def run_attack(url: str, key_id: str, rounds: int) -> int:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    return asyncio.run(attack(host, int(port), key_id, rounds))


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1]


async def main() -> None:
    redis_port, mock_port, port, metrics = (free_port() for _ in range(4))
    store = f"redis://127.0.0.1:{redis_port}/0"
    env = {"SIDECAR_STORE_URL": store, "SIDECAR_LISTEN": f"127.0.0.1:{port}",
           "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics}", "SIDECAR_LOG_LEVEL": "WARNING",
           "SIDECAR_UPSTREAM_URL": f"http://127.0.0.1:{mock_port}",
           "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
           # Extra settings for comparisons, e.g. SIDECAR_AUTH_REFUSAL_DELAY_S=0
           **dict(arg.split("=", 1) for arg in sys.argv[1:])}
    with process(["redis-server", "--port", str(redis_port), "--save", "", "--dir", tempfile.mkdtemp()]), \
         process([sys.executable, "-m", "sidecar", "mock-upstream", "--port", str(mock_port)]), \
         process([sys.executable, "-m", "sidecar", "serve"], env=env):
        wait_http(f"http://127.0.0.1:{metrics}/readyz")
        created = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "sidecar", "keys", "create", "--tenant", "bench",
                             "--json"], env={**os.environ, **env}, capture_output=True, check=True)
        record = json.loads(created.stdout)
        key, key_id = record["key"], record["key_id"]
        url = f"http://127.0.0.1:{port}/v1/models"
        # The flood has its own client: sharing one connection pool (100 connections) would
        # queue the valid requests in the client, not in the sidecar.
        # The flood runs in its own process (and client): sharing the measuring process's CPU or
        # connection pool would slow the valid requests in the client, not in the sidecar.
        async with aiohttp.ClientSession() as session:
            await latencies(session, url, key, 200, 8)  # warm: one argon2 verification
            idle = await latencies(session, url, key, 2000, 8)
            pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            attacking = asyncio.get_running_loop().run_in_executor(pool, run_attack, url, key_id, 5)
            loaded = await latencies(session, url, key, 2000, 8)
            refused = await attacking
            pool.shutdown()
    print(f"valid requests idle:          p50 {pct(idle, 50):.2f} ms  p99 {pct(idle, 99):.2f} ms")
    print(f"valid requests under attack:  p50 {pct(loaded, 50):.2f} ms  p99 {pct(loaded, 99):.2f} ms"
          f"  (ratio p99 {pct(loaded, 99) / pct(idle, 99):.2f}x; {refused} wrong secrets refused)")


if __name__ == "__main__":
    asyncio.run(main())
