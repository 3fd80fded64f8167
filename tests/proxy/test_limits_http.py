"""Rate limits and token budgets as clients see them through the sidecar."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sidecar.auth.hashing import SecretHasher
from sidecar.auth.keyformat import parse_key
from sidecar.auth.records import KeyRecords
from sidecar.metrics import Metrics
from sidecar.settings import StoreSettings
from sidecar.store.redis import connect
from tests.conftest import RedisProcess, SidecarFactory, create_key
from tests.procs import SidecarProcess

CHAT = "/v1/chat/completions"


def chat(model: str = "mock-gpt", stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": 50,
            "messages": [{"role": "user", "content": "count to three please"}], **extra}


def settled_tokens(redis_proc: RedisProcess, request_id: str) -> int | None:
    """Tokens recorded for one request in the tenant's token window (None if nothing recorded)."""
    client = redis_proc.client()
    for key in client.scan_iter("tq:*:amt"):
        value = client.hget(key, request_id)
        if value is not None:
            return int(value)
    return None


async def settled(redis_proc: RedisProcess, request_id: str, expected: int | None) -> int | None:
    """The recorded tokens once settlement (which runs after the answer is sent) has landed:
    polls until they equal `expected` or 5 s pass, and returns what was last seen."""
    deadline = time.monotonic() + 5
    while True:
        seen = settled_tokens(redis_proc, request_id)
        if seen == expected or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.01)


async def test_request_limit_headers_and_429(make_sidecar: SidecarFactory, redis_url: str) -> None:
    """Within the limit: OpenAI-style x-ratelimit headers; past it: 429 with Retry-After."""
    sidecar = await make_sidecar()
    key = await create_key(redis_url, limits=[{"window_s": 60, "requests": 3}])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        remaining = []
        for _ in range(3):
            async with session.post(sidecar.make_url(CHAT), json=chat()) as response:
                assert response.status == 200
                assert response.headers["x-ratelimit-limit-requests"] == "3"
                remaining.append(response.headers["x-ratelimit-remaining-requests"])
                assert response.headers["x-ratelimit-reset-requests"]
        async with session.post(sidecar.make_url(CHAT), json=chat()) as response:
            assert response.status == 429
            assert (await response.json())["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert remaining == ["2", "1", "0"]


async def test_settlement_matches_provider_usage(make_sidecar: SidecarFactory, redis_url: str,
                                                 redis_proc: RedisProcess) -> None:
    """Recorded tokens equal the provider's usage, plain and streamed (with or without the
    client asking for usage); a failed upstream call leaves nothing recorded."""
    sidecar = await make_sidecar()
    key = await create_key(redis_url, limits=[{"window_s": 3600, "tokens": 100_000}])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(sidecar.make_url(CHAT), json=chat()) as response:
            usage = (await response.json())["usage"]["total_tokens"]
            plain_id = response.headers["X-Request-Id"]
        async with session.post(sidecar.make_url(CHAT), json=chat(stream=True)) as response:
            await response.read()
            hidden_id = response.headers["X-Request-Id"]
        async with session.post(sidecar.make_url(CHAT), json=chat(
                stream=True, stream_options={"include_usage": True})) as response:
            shown = [line for line in (await response.text()).split("\n\n") if '"usage"' in line]
            shown_id = response.headers["X-Request-Id"]
        async with session.post(sidecar.make_url(CHAT), json=chat("mock-error-500")) as response:
            assert response.status == 502
            failed_id = response.headers["X-Request-Id"]
    assert len(shown) == 1
    assert await settled(redis_proc, plain_id, usage) == usage
    assert await settled(redis_proc, hidden_id, usage) == usage
    assert await settled(redis_proc, shown_id, usage) == usage
    assert await settled(redis_proc, failed_id, None) is None


async def test_request_larger_than_the_budget_is_refused_for_good(
    make_sidecar: SidecarFactory, redis_url: str,
) -> None:
    """A request whose estimate alone exceeds the budget is told it can never fit."""
    sidecar = await make_sidecar()
    key = await create_key(redis_url, limits=[{"window_s": 60, "tokens": 100}])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(sidecar.make_url(CHAT), json=chat(max_tokens=5000)) as response:
            assert response.status == 429
            error = (await response.json())["error"]
            assert "Retry-After" not in response.headers
    assert error["code"] == "token_quota_exceeded" and "never" in error["message"]


async def test_rotation_keeps_the_usage_window(make_sidecar: SidecarFactory, redis_url: str) -> None:
    """A rotated key shares its predecessor's windows: rotating does not reset a limit."""
    sidecar = await make_sidecar()
    old = await create_key(redis_url, limits=[{"window_s": 60, "requests": 2}])
    parsed = parse_key(old)
    assert parsed is not None
    store = await connect(StoreSettings(url=redis_url))
    hasher = SecretHasher(1, 8192, 1, 1)
    new, _, _ = await KeyRecords(store, hasher).rotate(parsed.key_id, 60)
    hasher.close()
    await store.close()
    statuses = []
    for key in (old, old, new):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
            async with session.post(sidecar.make_url(CHAT), json=chat()) as response:
                statuses.append(response.status)
    assert statuses == [200, 200, 429]


async def test_exact_across_four_sidecar_processes(mock_upstream: TestServer, redis_url: str) -> None:
    """4 sidecar processes, 400 concurrent requests with one key at 100/min: exactly 100 pass."""
    key = await create_key(redis_url, limits=[{"window_s": 60, "requests": 100}])
    # Exactness, not latency, is under test: a generous store deadline keeps a busy machine's
    # scheduling delays from turning into 503s under the deny policy.
    env = {"SIDECAR_STORE_URL": redis_url, "SIDECAR_LOG_LEVEL": "WARNING",
           "SIDECAR_STORE_TIMEOUT_S": "3",
           "SIDECAR_UPSTREAM_URL": str(mock_upstream.make_url("")).rstrip("/")}
    sidecars = [SidecarProcess(env) for _ in range(4)]
    await asyncio.gather(*(s.start() for s in sidecars))
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector,
                                         headers={"Authorization": f"Bearer {key}"}) as session:

            async def one(i: int) -> int:
                async with session.post(sidecars[i % 4].url + CHAT, json=chat()) as response:
                    await response.read()
                    return response.status

            statuses = await asyncio.gather(*(one(i) for i in range(400)))
    finally:
        for sidecar in sidecars:
            assert (await sidecar.stop())[0] == 0
    assert statuses.count(200) == 100
    assert statuses.count(429) == 300


async def test_forty_uncapped_requests_stay_within_the_token_budget(
        make_sidecar: SidecarFactory, redis_url: str, mock_upstream: TestServer) -> None:
    """Budget 20,000 tokens a minute; 40 concurrent chat requests without max_tokens to a model
    that writes until its limit: the sidecar sets each request's cap to what it reserved, so
    the tokens the provider reports for the admitted ones never pass the budget and no
    settlement goes over its reservation."""
    metrics = Metrics()
    sidecar = await make_sidecar(metrics=metrics)
    key = await create_key(redis_url, limits=[{"window_s": 60, "tokens": 20_000}])
    body = {"model": "mock-long", "messages": [{"role": "user", "content": "write forever"}]}

    async def one(session: aiohttp.ClientSession) -> tuple[int, int]:
        async with session.post(sidecar.make_url(CHAT), json=body) as response:
            data = await response.json()
            return response.status, data["usage"]["total_tokens"] if response.status == 200 else 0

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        answers = await asyncio.gather(*(one(session) for _ in range(40)))
    admitted = [tokens for status, tokens in answers if status == 200]
    assert {status for status, _ in answers} == {200, 429}
    assert len(admitted) >= 15
    assert sum(admitted) <= 20_000
    async with aiohttp.ClientSession() as plain:
        async with plain.get(mock_upstream.make_url("/_mock/requests")) as response:
            sent = [r["body"] for r in (await response.json())["requests"]]
    assert len(sent) == len(admitted)
    assert all(0 < b["max_completion_tokens"] <= 1024 and "max_tokens" not in b for b in sent)
    assert metrics.registry.get_sample_value("sidecar_budget_overrun_tokens_total") == 0


@pytest.mark.parametrize("cap", [{"max_tokens": 1e5}, {"max_tokens": -1}, {"max_tokens": "100"},
                                 {"max_tokens": True}, {"max_completion_tokens": 2.5},
                                 {"max_completion_tokens": [1]}])
async def test_an_invalid_completion_cap_is_a_400_naming_the_field(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession, cap: dict[str, Any]) -> None:
    """A float, negative, string or boolean cap is refused with a 400 that names the field
    (instead of reserving the default and letting the provider decide); nothing is sent."""
    sidecar = await make_sidecar()
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], **cap}
    async with session.post(sidecar.make_url(CHAT), json=body) as response:
        error = (await response.json())["error"]
        assert response.status == 400
    assert error["code"] == "invalid_request" and next(iter(cap)) in error["message"]
    async with session.get(mock_upstream.make_url("/_mock/requests")) as response:
        assert (await response.json())["requests"] == []
