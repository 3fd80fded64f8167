"""`make bench`: requests/s and latency direct, through a minimal aiohttp pass-through, and
through the sidecar, against the bundled mock provider and a real redis-server.

Layout on a 2-core machine (DESIGN.md section 10): the proxy under test on CPU 0; the mock
provider, Redis and wrk on CPU 1. Each row is the median of three rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
# Varied prompts: every request asks something else (words drawn per request), so no cache
# keyed by content, and no abuse signal keyed by a template, flatters the figures.
WORDS = ("lighthouse keeper message bottle story river mountain village winter garden letter "
         "recipe bread soup travel train station museum painting violin concert library "
         "astronomy planet comet telescope ocean whale island harbor storm sailor compass "
         "market bakery cheese apple orchard harvest festival lantern castle bridge tower "
         "forest fox owl badger meadow beekeeper honey clock inventor engine bicycle kite "
         "school teacher lesson history empire treaty merchant spice silk caravan desert "
         "oasis camel puzzle riddle chess strategy opening endgame poem sonnet rhyme chorus "
         "budget invoice spreadsheet database index query cache server network protocol "
         "kernel compiler function variable recursion algorithm graph tree sorting search").split()
VERBS = ("Summarize", "Explain", "Describe", "Compare", "Write a short note about",
         "List three facts about", "Suggest a title for", "Give advice on", "Outline")
SYSTEM = "You are a helpful assistant that answers briefly."


_QUESTION = json.loads(BODY)["messages"][1]["content"]
# The same question through the other APIs the sidecar guards: (row name, path, fixed body).
API_ROWS = (
    ("sidecar responses, fixed body", "/v1/responses", json.dumps({
        "model": "mock-gpt", "instructions": SYSTEM, "max_output_tokens": 64,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": _QUESTION}]}]})),
    ("sidecar messages, fixed body", "/v1/messages", json.dumps({
        "model": "mock-gpt", "system": SYSTEM, "max_tokens": 64,
        "messages": [{"role": "user", "content": _QUESTION}]})),
)


def varied_body(n: int) -> bytes:
    """Request body `n` of the varied workload: 1-3 sentences of 6-14 drawn words (the wrk
    script draws them the same way, from its own random generator)."""
    rng = random.Random(n)
    sentences = []
    for _ in range(rng.randint(1, 3)):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        sentences.append(f"{rng.choice(VERBS)} {words}.")
    return json.dumps({"model": "mock-gpt", "max_tokens": 64, "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": " ".join(sentences)}]}).encode()


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


def lua_list(items: tuple[str, ...] | list[str]) -> str:
    return "{" + ", ".join(json.dumps(i) for i in items) + "}"


def wrk_script(extra_headers: dict[str, str], fixed: str | None) -> str:
    """wrk's Lua: POST with our headers; `fixed` is a body sent every time, or else every
    request draws its own prompt
    (1-3 sentences of 6-14 words, as `varied_body`), so no cache keyed by content and no
    abuse signal keyed by a template flatters the figures."""
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in extra_headers.items())
    head = f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n{headers}'
    if fixed is not None:
        return head + f"wrk.body = {json.dumps(fixed)}\n"
    before, after = json.dumps({"model": "mock-gpt", "max_tokens": 64, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "@"}]}).split('"@"')
    return head + f"""
local WORDS = {lua_list(WORDS)}
local VERBS = {lua_list(VERBS)}
math.randomseed(os.time())
function request()
  local sentences = {{}}
  for s = 1, math.random(1, 3) do
    local words = {{}}
    for w = 1, math.random(6, 14) do words[w] = WORDS[math.random(#WORDS)] end
    sentences[s] = VERBS[math.random(#VERBS)] .. " " .. table.concat(words, " ") .. "."
  end
  return wrk.format(nil, nil, nil, {json.dumps(before)} .. '"' .. table.concat(sentences, " ")
                    .. '"' .. {json.dumps(after)})
end
"""


def wrk(url: str, connections: int, seconds: int, extra_headers: dict[str, str],
        fixed: str | None = None, path: str = "/v1/chat/completions") -> dict[str, float]:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(wrk_script(extra_headers, fixed))
    script.close()
    out = subprocess.run(
        [*cpus(1), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
         script.name, url + path],
        capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    sent = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {"rps": rps, "requests": float(sent), "p50_ms": pct("50"), "p99_ms": pct("99"),
            "errors": float(non2xx.group(1)) if non2xx else 0.0}


def redis_calls(port: int) -> int:
    """Commands run so far by the redis-server at `port` (INFO commandstats: those inside
    scripts included), the INFO calls themselves left out."""
    import redis  # the bench's venv has it (a dependency of the sidecar)

    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info")


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured_round(url: str, connections: int, seconds: int, headers: dict[str, str],
                   pid: int | None, redis_port: int | None, fixed: str | None,
                   path: str = "/v1/chat/completions") -> dict[str, float]:
    """One wrk round, plus the proxy's CPU per request when its pid is known (less sensitive
    than req/s to whatever else the machine runs) and the Redis commands per request when the
    round's redis-server is known."""
    before = cpu_seconds(pid) if pid else 0.0
    calls = redis_calls(redis_port) if redis_port else 0
    result = wrk(url, connections, seconds, headers, fixed, path)
    if pid:
        result["cpu_us"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
    if redis_port:
        time.sleep(0.2)  # the last settlements leave after their replies
        result["redis_cmds"] = (redis_calls(redis_port) - calls) / result["requests"]
    return result


def measure(url: str, connections: int, seconds: int, rounds: int, headers: dict[str, str],
            pid: int | None = None, redis_port: int | None = None,
            fixed: str | None = None, path: str = "/v1/chat/completions") -> dict[str, float]:
    wrk(url, connections, 1, headers, fixed, path)  # warm-up
    return median_of([measured_round(url, connections, seconds, headers, pid, redis_port, fixed,
                                     path)
                      for _ in range(rounds)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,32,128")
    parser.add_argument("--fixed-body-connections", type=int, default=32,
                        help="connections of the extra row that sends one fixed body (0: none)")
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
              "request limit and a token budget (admission + settlement per request); a different "
              "prompt in every request unless the row says 'fixed body'"
              + ("; every request traced (OTLP/HTTP)" if args.tracing else ""), flush=True)
        side = f"http://127.0.0.1:{side_port}"
        for c in conns:
            for name, url, pid, port in (
                    ("direct", mock, None, None),
                    ("aiohttp pass-through", f"http://127.0.0.1:{pass_port}", floor.pid, None),
                    ("sidecar", side, sidecar.pid, redis_port)):
                rows.append((name, c, measure(url, c, args.seconds, args.rounds, headers, pid,
                                              port)))
            if c == args.fixed_body_connections:
                rows.append(("sidecar, fixed body", c, measure(
                    side, c, args.seconds, args.rounds, headers, sidecar.pid, redis_port, BODY)))
            for name, path, body in API_ROWS:  # the other APIs, one fixed body each
                rows.append((name, c, measure(side, c, args.seconds, args.rounds, headers,
                                              sidecar.pid, redis_port, body, path)))
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
          f"{'vs floor':>10}{'+p50 ms':>9}{'CPU us/req':>12}{'Redis cmd/req':>15}")
    for name, c, r in rows:
        ratio = r["rps"] / floor[c]["rps"] if c in floor else float("nan")
        added = r["p50_ms"] - floor[c]["p50_ms"] if c in floor else float("nan")
        cpu = f"{r['cpu_us']:>12.0f}" if "cpu_us" in r else f"{'-':>12}"
        cmds = f"{r['redis_cmds']:>15.1f}" if "redis_cmds" in r else f"{'-':>15}"
        print(f"{name:<22}{c:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['errors']:>8.0f}{ratio:>10.2f}{added:>9.2f}{cpu}{cmds}")


if __name__ == "__main__":
    main()
