"""Output-guard speed: microseconds per KB for secrets+PII, per call for a short reply, and the
stream hold-back's delay and per-token cost.

Run: .venv/bin/python bench/bench_output_guards.py [--seconds S] [--breakdown]

Corpus: typical assistant replies (markdown prose, lists with numbers, Python/JS/shell code, JSON,
config) with no secrets, plus the same with one secret and one e-mail per ~2 KB. Reports CPU time
(best and median of 9 rounds; the box is shared, so the best round is the steadier figure). The
per-call part scans a ~300-byte reply the way the proxy does for a non-streamed answer: the shared
scanner alone, and with the per-request system-prompt leak check (built for the request, combined,
actions applied). The stream part replays a reply as 4-character tokens and reports how many
characters the redactor holds back after each token, how many tokens later each character is
released (and what that is in milliseconds at a given token rate), and the CPU cost of a `feed`;
then the cost per token of a short reply streamed word by word (as the mock provider does), with
and without the leak check.
"""

from __future__ import annotations

import argparse
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.guards.leaks import SystemPromptLeak
from sidecar.guards.redact import DEFAULT_ACTIONS, CombinedScanner, OutputScanner, Scanner, apply_actions
from sidecar.guards.stream import StreamRedactor

SYSTEM = "You are a helpful assistant that answers briefly."
SHORT_REPLY = (
    "The lighthouse keeper, Elias, finds a bottle on the rocks after a storm; the note inside is from "
    "a girl across the bay who has been signalling him for years. He answers with his lamp, three long "
    'flashes at 9 pm, and they become friends. Title: "The Light That Wrote Back".'
)
"""A ~300-byte answer, the size of a typical non-streamed reply in `make bench`."""

PROSE = """\
## Choosing a rate limiter

There are three common designs, and each trades precision for memory. A **fixed window** counts
requests per calendar minute; it is cheap (one counter per key) but lets a client send twice the
limit around a window boundary. A **sliding log** keeps one timestamp per request, which is exact
but costs about 120 bytes per entry in Redis, so a limit of 10,000 per minute means 1.2 MB per key.
A **sliding window counter** weights the previous window by the overlap; Cloudflare reported an
error rate of 0.003% across 400 million requests with it.

1. Start with the token bucket if you need bursts of up to 20 requests.
2. Measure p50 and p99 latency before and after (we saw 0.7 ms added at p50).
3. Keep the limit configurable per tenant, e.g. 60 requests per minute for the free tier.

In practice, most teams pick the counter: it is accurate enough, uses two numbers per key, and the
arithmetic fits in a short Lua script. If you run Redis Cluster, put the tenant in a hash tag such
as `{t:acme}` so both keys land in the same slot; otherwise the script fails with CROSSSLOT.
"""

CODE = '''\
```python
import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3
    base_delay: float = 0.25
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        """Exponential back-off with a cap; attempt counts from 0."""
        return min(self.max_delay, self.base_delay * (2 ** attempt))


async def fetch_with_retry(session, url: str, policy: RetryPolicy = RetryPolicy()) -> dict:
    for attempt in range(policy.attempts):
        try:
            async with session.get(url, timeout=10) as resp:
                resp.raise_for_status()
                return await resp.json()
        except (TimeoutError, ConnectionError) as exc:
            if attempt == policy.attempts - 1:
                raise RuntimeError(f"gave up after {attempt + 1} attempts") from exc
            await asyncio.sleep(policy.delay(attempt))
    return {}
```

Run it with `python -m app --workers 4 --port 8080`, then check `curl -s localhost:8080/healthz`.

```json
{"id": "chatcmpl-123", "object": "chat.completion", "created": 1718000000,
 "model": "gpt-4o-mini", "usage": {"prompt_tokens": 42, "completion_tokens": 128, "total_tokens": 170},
 "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}}]}
```

```yaml
services:
  api:
    image: ghcr.io/acme/api:1.4.2
    ports: ["8080:8080"]
    environment:
      LOG_LEVEL: info
      REDIS_URL: redis://redis:6379/0
      API_KEY: ${API_KEY}
```
'''


def _rand(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(random.choice(alphabet) for _ in range(n))


def corpus(kb: int, *, with_findings: bool) -> str:
    """About `kb` KB of replies; optionally one secret and one e-mail per ~2 KB."""
    random.seed(7)
    parts: list[str] = []
    size = 0
    while size < kb * 1024:
        block = PROSE if len(parts) % 2 == 0 else CODE
        if with_findings:
            block += f"\nUse the key sk-proj-{_rand(48)} and write to ops.{_rand(5).lower()}@example.org.\n"
        parts.append(block)
        size += len(block)
    return "".join(parts)


def us_per_kb(scanner: OutputScanner, text: str, seconds: float) -> tuple[float, float]:
    """(best, median) CPU microseconds per KB of `scanner.scan(text)` over 9 rounds."""
    scanner.scan(text)
    rounds = []
    for _ in range(9):
        n = 0
        t0 = time.process_time()
        while time.process_time() - t0 < seconds / 9:
            scanner.scan(text)
            n += 1
        rounds.append((time.process_time() - t0) / n)
    kb = len(text) / 1024
    return min(rounds) / kb * 1e6, statistics.median(rounds) / kb * 1e6


def best_us(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(best, median) CPU microseconds per call of `fn` over 9 rounds."""
    fn()
    rounds = []
    for _ in range(9):
        n = 0
        t0 = time.process_time()
        while time.process_time() - t0 < seconds / 9:
            fn()
            n += 1
        rounds.append((time.process_time() - t0) / n)
    return min(rounds) * 1e6, statistics.median(rounds) * 1e6


def per_call(scanner: OutputScanner, leak: bool) -> Callable[[], object]:
    """One non-streamed reply as the proxy scans it (`ResponseScan.whole`)."""

    def run() -> object:
        s: Scanner = CombinedScanner(scanner, SystemPromptLeak(SYSTEM)) if leak else scanner
        return apply_actions(SHORT_REPLY, s.scan(SHORT_REPLY), DEFAULT_ACTIONS)

    return run


def word_stream(scanner: OutputScanner, leak: bool) -> tuple[Callable[[], object], int]:
    """`SHORT_REPLY` streamed word by word through a fresh redactor, and the number of tokens."""
    words = SHORT_REPLY.split(" ")
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]

    def run() -> object:
        s: Scanner = CombinedScanner(scanner, SystemPromptLeak(SYSTEM)) if leak else scanner
        red = StreamRedactor(s, DEFAULT_ACTIONS)
        out = [red.feed(t) for t in tokens]
        out.append(red.finish())
        return out

    return run, len(tokens)


def holdback_stats(scanner: OutputScanner, text: str, token_chars: int = 4) -> dict[str, float]:
    """Replay `text` as tokens; per character, how many tokens later it is released, and feed cost."""
    red = StreamRedactor(scanner, DEFAULT_ACTIONS)
    tokens = [text[i : i + token_chars] for i in range(0, len(text), token_chars)]
    arrival: list[int] = []  # token index at which each raw character arrived
    delays: list[int] = []
    released = 0
    first_release = -1
    held: list[int] = []
    t0 = time.process_time()
    feed_time = 0.0
    for k, tok in enumerate(tokens):
        t1 = time.process_time()
        red.feed(tok)
        feed_time += time.process_time() - t1
        arrival.extend([k] * len(tok))
        now_released = len(arrival) - red.held
        if now_released > released and first_release < 0:
            first_release = k
        delays.extend(k - arrival[i] for i in range(released, now_released))
        released = now_released
        held.append(red.held)
    red.finish()
    dt = time.process_time() - t0
    delays.extend(len(tokens) - arrival[i] for i in range(released, len(arrival)))
    delays.sort()
    held.sort()
    return {
        "held_mean": statistics.fmean(held),
        "held_p50": held[len(held) // 2],
        "held_p99": held[int(len(held) * 0.99)],
        "held_max": held[-1],
        "delay_mean": statistics.fmean(delays),
        "delay_p50": delays[len(delays) // 2],
        "delay_p99": delays[int(len(delays) * 0.99)],
        "first": first_release,
        "us_per_token": feed_time / len(tokens) * 1e6,
        "total_s": dt,
    }


def breakdown(scanner: OutputScanner, text: str) -> None:
    """Rough per-row cost of the regex work (match attempts only, no gating)."""
    for spec in scanner._specs:
        t0 = time.process_time()
        for _ in range(5):
            list(spec.regex.finditer(text))
        print(f"  {spec.kind:24s} {(time.process_time() - t0) / 5 / (len(text) / 1024) * 1e6:7.1f} µs/KB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--kb", type=int, default=64)
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()
    scanner = OutputScanner(provider_key="prov-" + _rand(40), admin_token="adm-" + _rand(40))
    clean = corpus(args.kb, with_findings=False)
    dirty = corpus(args.kb, with_findings=True)
    prose = (PROSE * (args.kb * 1024 // len(PROSE) + 1))[: args.kb * 1024]
    code = (CODE * (args.kb * 1024 // len(CODE) + 1))[: args.kb * 1024]
    print(f"scan, secrets+PII, {args.kb} KB, CPU time, best and median of 9 rounds:")
    for name, text in [("prose", prose), ("code", code), ("mixed", clean), ("mixed+findings", dirty)]:
        best, median = us_per_kb(scanner, text, args.seconds)
        print(f"  {name:16s} {best:7.1f} µs/KB best, {median:7.1f} µs/KB median")
    reply = corpus(4, with_findings=True)
    st = holdback_stats(scanner, reply)
    print("stream, 4-character tokens over a 4 KB reply with findings:")
    print(
        f"  characters held after each token: mean {st['held_mean']:.1f}, p50 {st['held_p50']:.0f}, "
        f"p99 {st['held_p99']:.0f}, max {st['held_max']:.0f}"
    )
    print(
        f"  each character is released after: mean {st['delay_mean']:.2f}, p50 {st['delay_p50']:.0f}, "
        f"p99 {st['delay_p99']:.0f} further tokens; first text released with token #{st['first']}"
    )
    for rate in (30, 100):
        print(
            f"  at {rate} tokens/s that is {st['delay_mean'] / rate * 1000:.0f} ms mean, "
            f"{st['delay_p99'] / rate * 1000:.0f} ms p99 per character; first token "
            f"{st['first'] / rate * 1000:.0f} ms late"
        )
    lk = holdback_stats(CombinedScanner(scanner, SystemPromptLeak(SYSTEM)), reply)
    print(
        f"  with the system-prompt leak check: held p50 {lk['held_p50']:.0f}, p99 {lk['held_p99']:.0f}, "
        f"max {lk['held_max']:.0f}; released after mean {lk['delay_mean']:.2f}, "
        f"p99 {lk['delay_p99']:.0f} tokens"
    )
    feeds = sorted(holdback_stats(scanner, reply)["us_per_token"] for _ in range(9))
    print(f"  feed cost {feeds[0]:.1f} µs per token best, {feeds[4]:.1f} median of 9 replays (CPU)")
    print(f"per call, a {len(SHORT_REPLY)}-character reply (best and median of 9 rounds):")
    for leak in (False, True):
        best, median = best_us(per_call(scanner, leak), args.seconds / 2)
        what = "scan + leak check + actions" if leak else "scan alone"
        print(f"  {what:28s} {best:6.1f} µs best, {median:6.1f} µs median")
    print("stream, the same reply word by word (best and median of 9 rounds):")
    for leak in (False, True):
        run, n = word_stream(scanner, leak)
        best, median = best_us(run, args.seconds / 2)
        what = "with the leak check" if leak else "secrets and PII"
        print(f"  {what:28s} {best / n:6.1f} µs per token best, {median / n:6.1f} median")
    if args.breakdown:
        breakdown(scanner, clean)


if __name__ == "__main__":
    main()
