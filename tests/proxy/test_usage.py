"""Usage and cost per tenant and model: the metrics and the admin report equal what the mock
provider reported, per tenant and model; labels stay capped; the report is checked input."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from sidecar.admin import create_admin_app
from sidecar.auth.keyformat import parse_key
from sidecar.metrics import Metrics
from sidecar.model import Principal
from sidecar.settings import load_settings
from sidecar.store.redis import connect
from sidecar.usage import UsageService
from tests.conftest import SidecarFactory, create_key

TOKEN = "admin-" + os.urandom(12).hex()
PRICES = '{"mock-gpt": {"input": 2.5, "output": 10}, "mock-embed": {"input": 0.02, "output": 0}}'
Sums = dict[tuple[str, str], Counter[str]]


async def _call(session: aiohttp.ClientSession, url: str, key: str, route: str, body: dict[str, Any]
                ) -> dict[str, int]:
    """One request; returns the usage the provider reported to the client."""
    headers = {"Authorization": f"Bearer {key}"}
    async with session.post(f"{url}/v1/{route}", json=body, headers=headers) as response:
        assert response.status == 200, await response.text()
        if not body.get("stream"):
            usage: dict[str, int] = (await response.json())["usage"]
            return usage
        found: dict[str, int] = {}
        async for line in response.content:
            if line.startswith(b"data: {"):
                chunk = orjson.loads(line[6:])
                if chunk.get("usage"):
                    found = chunk["usage"]
        assert found, "the stream reported no usage"
        return found


def _workload() -> list[tuple[str, str, dict[str, Any]]]:
    """(tenant, route, body): chat whole and streamed, completions, embeddings, two models."""
    work: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(6):
        tenant = "tenant-a" if i % 3 else "tenant-b"
        model = "mock-gpt" if i % 2 else "mock-mini"
        work.append((tenant, "chat/completions", {
            "model": model, "messages": [{"role": "user", "content": f"question {i} " * (i + 1)}]}))
        work.append((tenant, "chat/completions", {
            "model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"streamed question {i}"}]}))
    work.append(("tenant-a", "completions", {"model": "mock-mini", "prompt": "Once upon a time"}))
    work.append(("tenant-b", "embeddings", {"model": "mock-embed", "input": ["alpha beta", "gamma"]}))
    return work


@pytest.fixture
async def traffic(make_sidecar: SidecarFactory, redis_url: str, aiohttp_server: Any
                  ) -> tuple[TestServer, TestServer, Metrics, Sums, dict[str, str]]:
    """A sidecar (tenant labels for both tenants, any model, a price table) after the workload,
    its admin app, and the usage the provider reported per (tenant, model)."""
    metrics = Metrics(CollectorRegistry())
    server = await make_sidecar(metrics=metrics, usage_metric_tenants="tenant-a,tenant-b",
                                usage_metric_models="*", usage_prices=PRICES)
    admin = await aiohttp_server(create_admin_app(server.app, TOKEN))
    keys = {"tenant-a": await create_key(redis_url, "tenant-a"),
            "tenant-b": await create_key(redis_url, "tenant-b")}
    second_a = await create_key(redis_url, "tenant-a")
    sums: Sums = defaultdict(Counter)
    url = str(server.make_url("")).rstrip("/")
    async with aiohttp.ClientSession() as session:
        for n, (tenant, route, body) in enumerate(_workload()):
            key = second_a if tenant == "tenant-a" and n % 4 == 0 else keys[tenant]
            usage = await _call(session, url, key, route, body)
            s = sums[(tenant, body["model"])]
            s["requests"] += 1
            s["prompt_tokens"] += usage["prompt_tokens"]
            s["completion_tokens"] += usage.get("completion_tokens", 0)
    # Bookings land after the answers: wait (bounded) until the store holds every request.
    client = redis.Redis.from_url(redis_url)
    expected = sum(s["requests"] for s in sums.values())
    deadline = time.monotonic() + 5
    while sum(int(v) for key in client.scan_iter("usage:*") for f, v in client.hgetall(key).items()
              if f.startswith(b"r|")) != expected:
        assert time.monotonic() < deadline, "usage bookings did not land"
        await asyncio.sleep(0.01)
    return server, admin, metrics, sums, {"second_a": _key_id(second_a)}


def _key_id(raw: str) -> str:
    parsed = parse_key(raw)
    assert parsed is not None
    return parsed.key_id


def _expected_cost(model: str, s: Counter[str]) -> float:
    price = {"mock-gpt": (2.5, 10.0), "mock-embed": (0.02, 0.0)}.get(model, (0.0, 0.0))
    return (s["prompt_tokens"] * price[0] + s["completion_tokens"] * price[1]) / 1e6


async def test_metrics_equal_the_provider_usage_per_tenant_and_model(traffic: Any) -> None:
    """sidecar_usage_* counters hold exactly the requests, tokens and cost the provider reported,
    for each (tenant, model)."""
    _, _, metrics, sums, _ = traffic
    value = metrics.registry.get_sample_value
    assert len(sums) >= 5
    for (tenant, model), s in sums.items():
        labels = {"tenant": tenant, "model": model}
        assert value("sidecar_usage_requests_total", labels) == s["requests"]
        assert value("sidecar_usage_tokens_total", {**labels, "direction": "prompt"}) == s["prompt_tokens"]
        assert value("sidecar_usage_tokens_total", {**labels, "direction": "completion"}) == \
            s["completion_tokens"]
        cost = value("sidecar_usage_cost_usd_total", labels) or 0.0
        assert cost == pytest.approx(_expected_cost(model, s), abs=1e-12)


async def _report(admin: TestServer, query: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            admin.make_url("/admin/usage?" + query), headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status, await r.json()


async def test_admin_report_equals_the_provider_usage_per_tenant_and_model(traffic: Any) -> None:
    """GET /admin/usage?group_by=model gives each tenant's provider-reported figures per model,
    cost from the price table, and a total that is their sum; tenants never mix."""
    _, admin, _, sums, _ = traffic
    for tenant in ("tenant-a", "tenant-b"):
        status, report = await _report(admin, f"tenant={tenant}&group_by=model")
        assert status == 200, report
        expected = {model: s for (t, model), s in sums.items() if t == tenant}
        assert {row["model"] for row in report["data"]} == set(expected)
        for row in report["data"]:
            s = expected[row["model"]]
            assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == \
                (s["requests"], s["prompt_tokens"], s["completion_tokens"])
            assert row["total_tokens"] == s["prompt_tokens"] + s["completion_tokens"]
            assert row["cost_usd"] == pytest.approx(_expected_cost(row["model"], s), abs=1e-12)
        total = report["total"]
        assert total["requests"] == sum(s["requests"] for s in expected.values())
        assert total["prompt_tokens"] == sum(s["prompt_tokens"] for s in expected.values())
        assert report["to"] - report["from"] >= 86400 and report["to"] % 3600 == 0


async def test_admin_report_by_key_and_hour(traffic: Any) -> None:
    """group_by=key_id splits a tenant's usage between its two keys; key_id= filters to one;
    group_by=hour,model puts everything in the current hour."""
    _, admin, _, sums, ids = traffic
    status, by_key = await _report(admin, "tenant=tenant-a&group_by=key_id")
    assert status == 200 and len(by_key["data"]) == 2
    assert sum(r["requests"] for r in by_key["data"]) == by_key["total"]["requests"]
    status, one = await _report(admin, f"tenant=tenant-a&key_id={ids['second_a']}&group_by=model")
    assert status == 200
    assert one["total"]["requests"] == next(r["requests"] for r in by_key["data"]
                                            if r["key_id"] == ids["second_a"]) > 0
    status, hourly = await _report(admin, "tenant=tenant-b&group_by=hour,model")
    now_hour = int(time.time()) // 3600 * 3600
    assert status == 200 and {r["hour"] for r in hourly["data"]} <= {now_hour, now_hour - 3600}
    assert sum(r["requests"] for r in hourly["data"]) == \
        sum(s["requests"] for (t, _), s in sums.items() if t == "tenant-b")


async def test_report_keys_carry_the_tenant_hash_tag_and_a_ttl(traffic: Any, redis_url: str) -> None:
    """Usage lives in `usage:{t:<tenant>}:h:<hour>` hashes, each with a TTL of the retention
    plus an hour (35 days by default)."""
    client = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in client.scan_iter("usage:*"))
    assert {k.split(":h:")[0] for k in keys} == {"usage:{t:tenant-a}", "usage:{t:tenant-b}"}
    for key in keys:
        assert 0 < client.ttl(key) <= 35 * 86400 + 3600


async def test_admin_report_rejects_bad_queries(traffic: Any) -> None:
    """Each malformed parameter is a 400 naming it; a range past the retention is refused."""
    _, admin, _, _, _ = traffic
    for query, word in [("", "tenant"), ("tenant=a b", "tenant"), ("tenant=a&group_by=prompt", "group_by"),
                        ("tenant=a&key_id=nope", "key_id"), ("tenant=a&from=yesterday", "from"),
                        ("tenant=a&from=2026-12-01T00:00:00", "from"),
                        ("tenant=a&limit=5", "unknown parameter")]:
        status, body = await _report(admin, query)
        assert status == 400, query
        assert word in body["error"]["message"], (query, body)
    status, body = await _report(
        admin, "tenant=nobody&from=2026-12-01T00:00:00Z&to=2026-12-02T01:00:00%2B01:00")
    assert status == 200 and body["data"] == [] and body["total"]["requests"] == 0
    assert (body["from"], body["to"]) == (1796083200, 1796083200 + 86400)
    status, body = await _report(admin, "tenant=a&from=0&to=1796083200")  # cut to the retention
    assert status == 200 and body["to"] - body["from"] == (35 * 24 + 1) * 3600
    status, body = await _report(admin, "tenant=a&from=1796083200&to=1796083100")  # empty range
    assert status == 200 and body["data"] == [] and body["from"] == body["to"]


async def test_tenant_label_cap_holds_under_10000_tenants() -> None:
    """With metric_tenants = "*" and a cap of 50, 10,000 distinct tenants make 50 tenant label
    values plus `other`, and no request goes uncounted."""
    settings = load_settings(env={"SIDECAR_USAGE_METRIC_TENANTS": "*", "SIDECAR_USAGE_RECORD": "false",
                                  "SIDECAR_USAGE_MAX_LABEL_VALUES": "50"})
    store = await connect(settings.store)
    try:
        metrics = Metrics(CollectorRegistry())
        usage = UsageService(store, settings.usage, metrics)
        for i in range(10_000):
            principal = Principal(key_id="k" * 12, tenant=f"t{i:05d}", scopes=frozenset({"chat"}))
            assert usage.record_soon(principal, "mock-gpt", 3, 2) is None
    finally:
        await store.close()
    samples = [s for m in metrics.registry.collect() if m.name == "sidecar_usage_requests"
               for s in m.samples if s.name == "sidecar_usage_requests_total"]
    tenants = {s.labels["tenant"] for s in samples}
    assert len(tenants) == 51 and "other" in tenants
    assert sum(s.value for s in samples) == 10_000
    other = next(s.value for s in samples if s.labels["tenant"] == "other")
    assert other == 10_000 - 50


def test_labels_off_by_default_and_allow_list_only() -> None:
    """Without configuration both labels read `all`; an allow-list labels only its names."""
    from sidecar.metrics import UsageLabels

    off = UsageLabels((), 50)
    assert {off(t) for t in ("a", "b", "c")} == {"all"}
    listed = UsageLabels(("acme", "globex"), 50)
    assert [listed(t) for t in ("acme", "initech", "globex")] == ["acme", "other", "globex"]
    assert UsageLabels(("*",), 5)("x" * 200) == "other"
