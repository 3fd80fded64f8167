"""Extraction runs are flagged within a bounded number of requests; natural traffic never is.

Everything runs against a real redis-server through the real script. The workloads are
compressed in time (thousands of requests within one window), which is the hardest case for
the natural workload.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from sidecar.abuse import AbuseService, AbuseVerdict
from sidecar.guards.fingerprint import fingerprint
from sidecar.model import Principal
from tests.abuse.conftest import ServiceFactory, suspects
from tests.abuse.workloads import (
    Call,
    chunks,
    embedding_batches,
    extraction_prompts,
    natural_workload,
)

# Bounds asserted here and reported in docs/abuse.md.
TEMPLATE_FLAG_BOUND = 200     # requests of a five-template scraper before it is flagged (94-159)
EMBEDDING_FLAG_BOUND = 200    # requests of 100 inputs before harvesting is flagged


def principal(key: str, tenant: str = "acme") -> Principal:
    return Principal(key, tenant, frozenset({"chat"}))


async def run_calls(service: AbuseService, calls: list[Call], tenant: str,
                    concurrency: int = 32) -> list[tuple[Call, AbuseVerdict]]:
    out: list[tuple[Call, AbuseVerdict]] = []
    for batch in chunks(calls, concurrency):
        verdicts = await asyncio.gather(*(
            service.check(principal(c.key, tenant), fingerprint(c.text, c.inputs)) for c in batch))
        out.extend(zip(batch, verdicts, strict=True))
    return out


async def first_flag(service: AbuseService, key: str, texts: list[str],
                     inputs: int = 0) -> tuple[int, AbuseVerdict]:
    """1-based index of the first request with a tripped signal (0: never), and its verdict."""
    first, verdict = 0, AbuseVerdict()
    for i, text in enumerate(texts, 1):
        v = await service.check(principal(key, "scrapers"), fingerprint(text, inputs))
        if v.signals and not first:
            first, verdict = i, v
    return first, verdict


async def test_template_scraper_is_flagged_within_bound(make_service: ServiceFactory) -> None:
    """A key sending 3,000 prompts from five templates is flagged for templated probing early."""
    service = await make_service()
    first, verdict = await first_flag(service, "scraper", extraction_prompts(3000))
    assert 0 < first <= TEMPLATE_FLAG_BOUND
    assert verdict.signals == ("key:template",)
    assert verdict.score >= 1.0
    assert suspects(service, "key:template") == 1  # once per key and window, not per request


async def test_embedding_harvest_is_flagged_within_bound(make_service: ServiceFactory) -> None:
    """A key embedding 100 distinct inputs per request is flagged for harvesting early."""
    service = await make_service()
    batches = embedding_batches(300, 100)
    first, verdict = await first_flag(service, "harvester", ["\n".join(b[:16]) for b in batches],
                                      inputs=100)
    assert 0 < first <= EMBEDDING_FLAG_BOUND
    assert "key:embeddings" in verdict.signals


async def test_natural_workload_is_never_flagged(make_service: ServiceFactory) -> None:
    """3,000 real prompts from 40 keys of one tenant, with retries, trip no signal at all."""
    service = await make_service()
    results = await run_calls(service, natural_workload(3000, 40), "acme")
    assert [v for _, v in results if v.signals or v.action != "allow"] == []
    assert max(v.score for _, v in results) < 0.8
    assert service.metrics.registry.get_sample_value("sidecar_abuse_suspects_total",
                                                     {"signal": "key:template"}) is None


async def test_only_the_scraper_is_flagged_in_mixed_traffic(make_service: ServiceFactory) -> None:
    """Natural users and a scraper at the same time: the scraper's key alone is flagged."""
    service = await make_service()
    natural = natural_workload(2000, 40, seed=11)
    scraper = [Call("scraper", t) for t in extraction_prompts(2000, seed=12)]
    mixed = [c for pair in zip(natural, scraper, strict=True) for c in pair]

    async def one(c: Call) -> tuple[Call, AbuseVerdict]:
        tenant = "scrapers" if c.key == "scraper" else "acme"
        return c, await service.check(principal(c.key, tenant), fingerprint(c.text))

    flagged: set[str] = set()
    for batch in chunks(mixed, 32):
        for c, v in await asyncio.gather(*(one(c) for c in batch)):
            if v.signals:
                flagged.add(c.key)
    assert flagged == {"scraper"}


async def test_scraper_spread_over_many_keys_flags_the_tenant(make_service: ServiceFactory) -> None:
    """One template spread over 400 keys of a tenant (5 each) trips the tenant's template signal."""
    service = await make_service()
    prompts = extraction_prompts(2000, seed=5)
    calls = [Call(f"k{i % 400}", p) for i, p in enumerate(prompts)]
    results = await run_calls(service, calls, "farm")
    signals = {s for _, v in results for s in v.signals}
    assert "tenant:template" in signals
    assert not any(s.startswith("key:") for s in signals)


async def test_output_token_volume_is_flagged(make_service: ServiceFactory) -> None:
    """A key whose responses add up to more output tokens than the window allows is flagged."""
    service = await make_service(key_output_tokens=100_000)
    p = principal("talker")
    assert (await service.check(p, fingerprint("Write a long story."))).signals == ()
    for _ in range(5):
        await service.record_output(p, 25_000)
    verdict = await service.check(p, fingerprint("Write another long story."))
    assert verdict.signals == ("key:output",)
    assert verdict.score == pytest.approx(1.25)


async def test_volume_and_distinct_signals_trip_at_their_thresholds(
        make_service: ServiceFactory) -> None:
    """Request volume and distinct prompts trip exactly at their configured thresholds."""
    service = await make_service(key_requests=50, key_distinct=30, key_template=0)
    p = principal("busy")
    seen: list[tuple[str, ...]] = []
    for i in range(50):
        text = f"question {i} about something else entirely" if i < 30 else "the same question"
        seen.append((await service.check(p, fingerprint(text))).signals)
    assert seen[28] == ()
    assert seen[29] == ("key:distinct",)           # the 30th distinct prompt
    assert seen[48] == ("key:distinct",)           # retries add no distinct prompt
    assert seen[49] == ("key:volume", "key:distinct")  # the 50th request


async def test_suspect_log_line_once_per_window_without_text(
        make_service: ServiceFactory, caplog: pytest.LogCaptureFixture) -> None:
    """A suspect is logged once per key and signal per window, with its key id and no prompt text."""
    service = await make_service(key_requests=5)
    with caplog.at_level(logging.WARNING, logger="sidecar.abuse"):
        for i in range(20):
            await service.check(principal("noisy"), fingerprint(f"secret plan number {i}"))
    lines = [r for r in caplog.records if r.name == "sidecar.abuse"]
    assert len(lines) == 1
    fields = lines[0].__dict__["fields"]
    assert (fields["signal"], fields["scope"], fields["key_id"]) == ("volume", "key", "noisy")
    assert "secret plan" not in str(lines[0].__dict__)
