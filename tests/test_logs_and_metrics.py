"""What a log collector and Prometheus get from a sidecar: only JSON lines, one line per store
outage and one per recovery, and every known series from the first scrape."""

from __future__ import annotations

import asyncio
import platform
import time

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from sidecar import __version__
from tests.conftest import RedisProcess, create_key
from tests.procs import SidecarProcess
from tests.test_metrics_scrape import scrape, value

CHAT = "/v1/chat/completions"
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}


def json_lines(text: str) -> list[dict[str, object]]:
    """Every line of `text` as a JSON object; fails naming the first line that is not one."""
    parsed = []
    for line in text.splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(obj, dict), line
        parsed.append(obj)
    return parsed


async def test_an_outage_and_its_recovery_are_logged_once_each(
        mock_upstream: TestServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Redis goes away under traffic and comes back: every stderr line is JSON, with exactly one
    'store unavailable' line and, after it, exactly one 'store recovered' line (not one per
    request), while the 503s in between are each answered."""
    redis = RedisProcess(tmp_path_factory.mktemp("redis-outage"))
    redis.start()
    key = await create_key(redis.url, limits=[{"window_s": 60, "requests": 1000}])
    sidecar = SidecarProcess({"SIDECAR_STORE_URL": redis.url, "SIDECAR_STORE_TIMEOUT_S": "0.2",
                              "SIDECAR_UPSTREAM_URL": str(mock_upstream.make_url("")).rstrip("/")})
    await sidecar.start()
    statuses: list[int] = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            async with session.post(sidecar.url + CHAT, json=BODY) as response:
                assert response.status == 200
            redis.stop()
            for _ in range(20):
                async with session.post(sidecar.url + CHAT, json=BODY) as response:
                    statuses.append(response.status)
            redis.start()  # same port
            deadline = time.monotonic() + 15
            while True:  # the breaker lets a probe through within a second or so
                async with session.post(sidecar.url + CHAT, json=BODY) as response:
                    if response.status == 200:
                        break
                assert time.monotonic() < deadline, "no recovery within 15 s"
                await asyncio.sleep(0.05)
    finally:
        code, err = await sidecar.stop()
        redis.stop()
    assert code == 0
    assert statuses == [503] * 20
    lines = json_lines(err)
    messages = [line["msg"] for line in lines]
    store_lines = [line for line in lines if line["logger"] == "sidecar.store"]
    assert messages.count("store unavailable") == 1, store_lines
    assert messages.count("store recovered") == 1, store_lines
    assert messages.index("store unavailable") < messages.index("store recovered")


async def test_first_scrape_has_every_known_series_build_info_and_process_metrics() -> None:
    """Before any request: refusal reasons, redaction kinds and per-route histograms at 0, the
    standard process_* and python_* metrics, and sidecar_build_info naming the versions."""
    import aiohttp as aiohttp_module

    sidecar = SidecarProcess({})
    await sidecar.start()
    try:
        samples, names = await scrape(sidecar)
    finally:
        code, err = await sidecar.stop()
    assert code == 0
    json_lines(err)
    blocked = "sidecar_blocked_requests_total"
    for route in ("chat", "completions", "embeddings", "models", "conversations"):
        for reason in ("rate_limit_exceeded", "prompt_injection_detected", "store_unavailable",
                       "shadow:prompt_injection_detected"):
            assert (blocked, (("reason", reason), ("route", route))) in samples, (route, reason)
            assert value(samples, blocked, route=route, reason=reason) == 0
        assert ("sidecar_request_duration_seconds_count", (("route", route),)) in samples
    for kind in ("secret:aws", "secret:openai", "pii:email", "pii:credit_card"):
        assert ("sidecar_redactions_total", (("kind", kind),)) in samples, kind
    assert ("sidecar_store_errors_total", (("op", "limits_admit"),)) in samples
    assert ("sidecar_degraded_requests_total", (("feature", "limits"),)) in samples
    assert ("sidecar_abuse_suspects_total", (("signal", "key:template"),)) in samples
    assert {"process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds",
            "python_info", "python_gc_collections"} <= names
    assert value(samples, "sidecar_build_info", version=__version__,
                 python=platform.python_version(), aiohttp=aiohttp_module.__version__) == 1
