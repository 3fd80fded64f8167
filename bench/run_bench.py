"""`make bench`: requests/s and latency direct, through a minimal aiohttp pass-through, and
through the sidecar, against the bundled mock provider and a real redis-server.

Layout on a 2-core machine (DESIGN.md section 10): the proxy under test on CPU 0; the mock
provider, Redis and wrk on CPU 1. Each row is the median of three rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BODY = json.dumps({
    "model": "mock-gpt",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant that answers briefly."},
        {"role": "user", "content": "Summarize the plot of a short story about a lighthouse "
                                    "keeper who finds a message in a bottle, in two sentences, "
                                    "and suggest a title for it that a child would like."},
    ],
    "max_tokens": 64,
})
_QUESTION = json.loads(BODY)["messages"][1]["content"]
_SYSTEM = json.loads(BODY)["messages"][0]["content"]
# The same question through the other APIs the sidecar guards: (row name, path, body).
API_ROWS = (
    ("sidecar responses", "/v1/responses", json.dumps({
        "model": "mock-gpt", "instructions": _SYSTEM, "max_output_tokens": 64,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": _QUESTION}]}]})),
    ("sidecar messages", "/v1/messages", json.dumps({
        "model": "mock-gpt", "system": _SYSTEM, "max_tokens": 64,
        "messages": [{"role": "user", "content": _QUESTION}]})),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpus(*ids: int) -> list[str]:
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        return ["taskset", "-c", ",".join(map(str, ids))]
    return []


def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def process(cmd: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wrk(url: str, connections: int, seconds: int, extra_headers: dict[str, str],
        path: str = "/v1/chat/completions", body: str = BODY) -> dict[str, float]:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in extra_headers.items())
    # Every request carries a different user message (a counter in the text), so caches keyed
    # by content do not flatter the figures.
    head, _, tail = body.partition("Summarize")
    script.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n{headers}'
                 f'local n = 0\nfunction request()\n  n = n + 1\n'
                 f'  return wrk.format(nil, nil, nil, {json.dumps(head)} .. "Request " .. n .. ". "'
                 f' .. {json.dumps("Summarize" + tail)})\nend\n')
    script.close()
    out = subprocess.run(
        [*cpus(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
         script.name, url + path],
        capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "errors": float(non2xx.group(1)) if non2xx else 0.0}


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_round(url: str, connections: int, seconds: int, headers: dict[str, str],
                   pid: int | None, path: str = "/v1/chat/completions",
                   body: str = BODY) -> dict[str, float]:
    """One wrk round, plus the proxy's CPU per request when its pid is known: less sensitive
    than req/s to whatever else the machine runs."""
    before = cpu_seconds(pid) if pid else 0.0
    result = wrk(url, connections, seconds, headers, path, body)
    if pid:
        result["cpu_us"] = (cpu_seconds(pid) - before) / (result["rps"] * seconds) * 1e6
    return result


def measure(url: str, connections: int, seconds: int, rounds: int,
            headers: dict[str, str], pid: int | None = None, path: str = "/v1/chat/completions",
            body: str = BODY) -> dict[str, float]:
    wrk(url, connections, 1, headers, path, body)  # warm-up
    return median_of([measured_round(url, connections, seconds, headers, pid, path, body)
                      for _ in range(rounds)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,32,128")
    parser.add_argument("--tracing", action="store_true",
                        help="trace every request (OpenTelemetry, OTLP/HTTP to a local sink that "
                             "keeps nothing); needs the otel extra")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (make bench installs it from Debian)")
    conns = [int(c) for c in args.connections.split(",")]
    mock_port, pass_port, side_port, metrics_port, redis_port = (free_port() for _ in range(5))
    mock = f"http://127.0.0.1:{mock_port}"
    workdir = tempfile.mkdtemp(prefix="sidecar-bench-")
    env = {
        "SIDECAR_LISTEN": f"127.0.0.1:{side_port}",
        "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "SIDECAR_UPSTREAM_URL": mock,
        "SIDECAR_ANTHROPIC_URL": mock,
        "SIDECAR_STORE_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SIDECAR_LOG_LEVEL": "WARNING",
        "OPENAI_API_KEY": "bench-provider-key",
    }
    sink_port = free_port()
    if args.tracing:  # every request sampled (wrk sends no traceparent: root spans, always on)
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{sink_port}/v1/traces"
        env["OTEL_SERVICE_NAME"] = "sidecar-bench"
    sink: AbstractContextManager[object] = \
        process([*cpus(1), PY, str(ROOT / "bench" / "otlp_sink.py"), str(sink_port)]) \
        if args.tracing else nullcontext()
    rows: list[tuple[str, int, dict[str, float]]] = []
    with process([*cpus(1), "redis-server", "--port", str(redis_port), "--save", "",
                  "--appendonly", "no", "--dir", workdir]), \
         process([*cpus(1), PY, "-m", "sidecar", "mock-upstream", "--port", str(mock_port)]), \
         process([*cpus(0), PY, str(ROOT / "bench" / "passthrough.py"), str(pass_port), mock]) as floor, \
         sink, \
         process([*cpus(0), PY, "-m", "sidecar", "serve"], env=env) as sidecar:
        wait_http(mock + "/v1/models")
        wait_http(f"http://127.0.0.1:{metrics_port}/readyz")
        wait_http(f"http://127.0.0.1:{pass_port}/")
        headers = bench_headers(env)
        print("sidecar: every guard on (injection, output scanning), abuse checks, and a key with a "
              "request limit and a token budget (admission + settlement per request)"
              + ("; every request traced (OTLP/HTTP)" if args.tracing else ""), flush=True)
        for c in conns:
            for name, url, pid in (
                    ("direct", mock, None),
                    ("aiohttp pass-through", f"http://127.0.0.1:{pass_port}", floor.pid),
                    ("sidecar", f"http://127.0.0.1:{side_port}", sidecar.pid)):
                rows.append((name, c, measure(url, c, args.seconds, args.rounds, headers, pid)))
            for name, path, body in API_ROWS:
                rows.append((name, c, measure(f"http://127.0.0.1:{side_port}", c, args.seconds,
                                              args.rounds, headers, sidecar.pid, path, body)))
    print_table(rows)


def bench_headers(env: dict[str, str]) -> dict[str, str]:
    """A key for the benchmark, created like an operator would, with limits that never refuse
    (so every request pays for admission and settlement)."""
    limits = ['{"window_s": 60, "requests": 1000000000}', '{"window_s": 60, "tokens": 1000000000000}']
    created = subprocess.run(
        [PY, "-m", "sidecar", "keys", "create", "--tenant", "bench", "--json",
         "--scopes", "chat,completions,embeddings,models,responses,messages",
         *(arg for rule in limits for arg in ("--limit", rule))],
        env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return {"Authorization": f"Bearer {json.loads(created.stdout)['key']}",
            "anthropic-version": "2023-06-01"}


def print_table(rows: list[tuple[str, int, dict[str, float]]]) -> None:
    floor = {c: r for n, c, r in rows if n == "aiohttp pass-through"}
    print(f"{'target':<22}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'vs floor':>10}{'+p50 ms':>9}{'CPU us/req':>12}")
    for name, c, r in rows:
        ratio = r["rps"] / floor[c]["rps"] if c in floor else float("nan")
        added = r["p50_ms"] - floor[c]["p50_ms"] if c in floor else float("nan")
        cpu = f"{r['cpu_us']:>12.0f}" if "cpu_us" in r else f"{'-':>12}"
        print(f"{name:<22}{c:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['errors']:>8.0f}{ratio:>10.2f}{added:>9.2f}{cpu}")


if __name__ == "__main__":
    main()
