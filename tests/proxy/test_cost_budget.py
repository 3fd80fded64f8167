"""Budgets in cost: the provider's reported tokens priced by usage.prices, reserved from the
estimate and settled with the real figure, next to a token budget on the same key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis

from sidecar.limits.fallback import FallbackLimiter
from sidecar.limits.rules import NANO, build_plan
from sidecar.model import LimitRule, Principal
from sidecar.settings import LimitsSettings
from tests.conftest import SidecarFactory, create_key

CHAT = "/v1/chat/completions"
# $1,000 per million tokens in and out: one token costs $0.001 = 1,000,000 nano-dollars.
PRICES = '{"mock-gpt": {"input": 1000, "output": 1000}}'
PER_TOKEN_NUSD = 1_000_000
BUDGET_USD = 0.2


def _chat(max_tokens: int, model: str = "mock-gpt") -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "count to three please"}]}


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "settlement did not land"
        await asyncio.sleep(0.01)


def _window_sum(client: redis.Redis, prefix: str) -> int:
    keys = list(client.scan_iter(f"{prefix}:*:amt"))
    assert len(keys) == 1, keys
    return int(client.hget(keys[0], "") or 0)


async def test_cost_budget_admits_until_spent_and_settles_the_real_cost(
        make_sidecar: SidecarFactory, redis_url: str) -> None:
    """A key with $0.20 a minute and 10,000 tokens a minute: requests pass until the priced
    usage leaves less than the next estimate, then 429 'Cost budget reached'; the cost window
    holds exactly the reported tokens x price, and the token window exactly the tokens."""
    sidecar = await make_sidecar(usage_prices=PRICES)
    key = await create_key(redis_url, limits=[{"window_s": 60, "cost_usd": BUDGET_USD},
                                              {"window_s": 60, "tokens": 10_000}])
    client = redis.Redis.from_url(redis_url)
    spent_tokens, refusal = 0, None
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        for _ in range(40):
            async with session.post(sidecar.make_url(CHAT), json=_chat(8)) as response:
                body = await response.json()
                if response.status == 429:
                    refusal = body["error"]
                    break
                assert response.status == 200, body
                spent_tokens += body["usage"]["total_tokens"]
    assert refusal is not None and refusal["code"] == "token_quota_exceeded"
    assert refusal["message"].startswith("Cost budget reached: $0.20 per minute for this API key")
    assert spent_tokens > 0
    # Settlement lands after the answers: wait (bounded) until the windows hold the real usage.
    await _until(lambda: _window_sum(client, "tq") == spent_tokens)
    assert _window_sum(client, "cq") == spent_tokens * PER_TOKEN_NUSD <= BUDGET_USD * NANO


async def test_a_request_that_can_never_fit_the_cost_budget(make_sidecar: SidecarFactory,
                                                            redis_url: str) -> None:
    """max_tokens priced above the whole budget is refused at once, naming both amounts; an
    unpriced model costs nothing and passes (docs/usage.md says to pair cost with tokens)."""
    sidecar = await make_sidecar(usage_prices=PRICES)
    key = await create_key(redis_url, limits=[{"window_s": 3600, "cost_usd": BUDGET_USD}])
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(sidecar.make_url(CHAT), json=_chat(1000)) as response:
            assert response.status == 429
            message = (await response.json())["error"]["message"]
        assert "more than the whole budget of $0.20 per hour" in message
        async with session.post(sidecar.make_url(CHAT), json=_chat(1000, "mock-free")) as response:
            assert response.status == 200


def test_fallback_limiter_counts_cost_in_nano_dollars() -> None:
    """With the store down and on_store_error = allow, the in-process share of a cost window
    admits by cost, not by tokens."""
    principal = Principal("k" * 12, "t", frozenset({"chat"}), (LimitRule(60, cost_usd=1.0),))
    plan = build_plan(principal, LimitsSettings())
    fallback = FallbackLimiter(0.5)  # this process may spend $0.50 of the $1.00
    assert fallback.admit(plan.checks, cost=10**6, money=400_000_000).admitted
    refused = fallback.admit(plan.checks, cost=1, money=200_000_000)
    assert not refused.admitted and refused.refused[0].kind == "cost"


def test_cost_rules_reject_bad_values() -> None:
    """cost_usd must be a positive number of dollars, at most a million."""
    from sidecar.errors import ConfigError
    from sidecar.settings import load_settings

    for bad in ("0", "-1", "\"5\"", "true", "2e6"):
        with pytest.raises(ConfigError, match=r"limits\.key\[0\]\.cost_usd: expected US dollars"):
            load_settings(env={"SIDECAR_LIMITS_KEY": f'[{{"window_s": 60, "cost_usd": {bad}}}]'})
