"""Pure parts of the limiter: key encoding, plans, token estimates, headers, fallback counters."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import InvalidRequest
from sidecar.limits.fallback import FallbackLimiter
from sidecar.limits.headers import WindowState, format_duration, rate_limit_headers, tightest
from sidecar.limits.rules import build_plan, encode_part
from sidecar.limits.tokens import clamp_cap, completion_cap, estimate_tokens, text_tokens
from sidecar.settings import LimitsSettings
from tests.limits.conftest import principal, rule

HASH_TAG = re.compile(r"^[^{]*\{([^}]*)\}")


@given(st.text(), st.text(), st.text(), st.text())
def test_encoded_keys_never_collide_and_keep_one_hash_tag(t1: str, k1: str, t2: str, k2: str) -> None:
    """Two different (tenant, key id) pairs never share a window key, whatever their text."""
    settings = LimitsSettings(key=(rule(60, requests=1),))
    key1 = build_plan(principal(k1, t1), settings).keys[0]
    key2 = build_plan(principal(k2, t2), settings).keys[0]
    assert (key1 == key2) == ((t1, k1) == (t2, k2))
    tag = HASH_TAG.match(key1)
    assert tag is not None and tag.group(1) == "t:" + encode_part(t1)


def test_every_key_of_a_plan_carries_the_tenant_hash_tag() -> None:
    """All windows of one admission hash to the tenant's slot, so one script can touch them."""
    settings = LimitsSettings(key=(rule(60, requests=5, tokens=100), rule(86400, tokens=10**6)),
                              tenant=(rule(3600, requests=50, tokens=10**5),))
    plan = build_plan(principal("k", "te.nant-1"), settings)
    assert len(plan.keys) == 8
    assert {HASH_TAG.match(k).group(1) for k in plan.keys} == {"t:te.nant-1"}  # type: ignore[union-attr]
    assert plan.keys[0] == "rl:{t:te.nant-1}:k:k:60"


def test_key_windows_hang_off_the_lineage_so_rotated_keys_share_usage() -> None:
    """A rotated key (new id, same lineage) counts in the same windows as the key it replaced."""
    settings = LimitsSettings(key=(rule(60, requests=5),))
    old = build_plan(principal("key-old", "t"), settings)
    new = build_plan(principal("key-new", "t", lineage="key-old"), settings)
    assert old.keys == new.keys


def test_a_keys_own_rules_replace_the_default_key_rules() -> None:
    """Per-key limits from the key record replace settings.limits.key; tenant rules stay."""
    settings = LimitsSettings(key=(rule(60, requests=5),), tenant=(rule(60, requests=50),))
    plan = build_plan(principal("k", "t", rule(3600, requests=7)), settings)
    assert [(c.level, c.window_s, c.limit) for c in plan.checks] == [("key", 3600, 7),
                                                                     ("tenant", 60, 50)]


def test_same_window_rules_collapse_to_the_tightest_and_shadow_keeps_its_own_log() -> None:
    """Two enforced rules on one window keep the lower limit; a shadow rule gets its own key."""
    settings = LimitsSettings(key=(rule(60, requests=9), rule(60, requests=4),
                                   rule(60, requests=2, mode="shadow")))
    plan = build_plan(principal("k", "t"), settings)
    assert [(c.limit, c.shadow, c.keys[0]) for c in plan.checks] == [
        (4, False, "rl:{t:t}:k:k:60"), (2, True, "rl:{t:t}:k:k:60:shadow")]


@pytest.mark.parametrize(("route", "body", "expected"), [
    ("chat", {"messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 10}, 3 + 4 + 2 + 10),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5, "n": 2},
     3 + 4 + 1 + 10),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}]}]},
     3 + 4 + 1 + 1024),
    ("completions", {"prompt": ["abcd", "efgh"], "max_tokens": 1}, 2 + 1),
    ("completions", {"prompt": [1, 2, 3], "max_tokens": 0}, 3),
    ("embeddings", {"input": "abcdefgh", "max_tokens": 99}, 2),
    ("chat", {"messages": [], "max_tokens": 10**9}, 131072),
])
def test_token_estimate_is_prompt_plus_completion_cap(route: str, body: dict, expected: int) -> None:
    """The reservation is the prompt estimate plus max_tokens (default when unset), capped."""
    assert estimate_tokens(route, body, LimitsSettings()) == expected


def test_non_ascii_text_counts_a_token_per_character() -> None:
    """Scripts without spaces or Latin letters are not under-estimated at 4 characters a token."""
    assert text_tokens("数据安全") == 4
    assert text_tokens("abcd数") == 2


@pytest.mark.parametrize(("ms", "text"), [
    (0, "0s"), (20, "20ms"), (1000, "1s"), (1500, "1.5s"), (59_996, "59.996s"),
    (360_000, "6m0s"), (3_723_000, "1h2m3s"), (86_400_000, "24h0m0s")])
def test_reset_durations_are_written_like_openai(ms: int, text: str) -> None:
    """Reset headers use OpenAI's duration format so clients that parse it keep working."""
    assert format_duration(ms) == text


def test_headers_report_the_tightest_window_and_round_retry_after_up() -> None:
    """The window with the least remaining is reported; Retry-After is whole seconds, rounded up."""
    chosen = tightest([WindowState(100, 40, 5000), WindowState(1000, 3, 90_000)])
    headers = rate_limit_headers(chosen, None, 1001)
    assert headers == {"x-ratelimit-limit-requests": "1000", "x-ratelimit-remaining-requests": "3",
                       "x-ratelimit-reset-requests": "1m30s", "Retry-After": "2",
                       "retry-after-ms": "1001"}


def test_fallback_admits_its_share_and_forgets_least_recent_windows() -> None:
    """Degraded, one process admits limit x share per window, and memory stays bounded."""
    now = [1000.0]
    fallback = FallbackLimiter(0.1, max_windows=50, clock=lambda: now[0])
    plan = build_plan(principal("k", "t"), LimitsSettings(key=(rule(60, requests=100),)))
    admitted = sum(fallback.admit(plan.checks, 0).admitted for _ in range(30))
    assert admitted == 10
    now[0] += 120
    assert fallback.admit(plan.checks, 0).admitted
    settings = LimitsSettings(key=(rule(60, requests=100),))
    for i in range(500):
        fallback.admit(build_plan(principal(f"k{i}", "t"), settings).checks, 0)
    assert len(fallback) == 50


@pytest.mark.parametrize(("route", "body", "reserved", "expected"), [
    ("chat", {"messages": []}, 1024, {"max_completion_tokens": 1024}),
    ("chat", {"messages": [], "max_tokens": 5000}, 900, {"max_tokens": 900}),
    ("chat", {"messages": [], "max_completion_tokens": 5000, "n": 3}, 900,
     {"max_completion_tokens": 300, "n": 3}),
    ("chat", {"messages": [], "max_tokens": 50}, 900, {"max_tokens": 50}),
    ("completions", {"prompt": "x"}, 16, {"prompt": "x", "max_tokens": 16}),
    ("completions", {"prompt": "x", "max_tokens": 0}, 16, {"prompt": "x", "max_tokens": 0}),
    ("embeddings", {"input": "x"}, 0, {"input": "x"}),
])
def test_the_cap_is_set_to_what_was_reserved(route: str, body: dict, reserved: int,
                                             expected: dict) -> None:
    """No cap, or one above the reservation, becomes the reserved completion tokens per choice
    (in the field the request uses; max_completion_tokens for chat, max_tokens for completions);
    a cap within it is left alone."""
    before = {k: v for k, v in body.items() if k != "messages"}
    changed = clamp_cap(route, body, reserved)
    after = {k: v for k, v in body.items() if k != "messages"}
    assert after == expected
    assert changed == (after != before)


@pytest.mark.parametrize("value", [1e5, 2.0, -1, "100", True, None, [3], {"n": 1}])
def test_completion_cap_refuses_what_is_not_a_whole_number(value: object) -> None:
    """Floats (even whole ones), negatives, strings, booleans and containers are a clear 400
    naming the field; an explicit null means no cap."""
    for field in ("max_tokens", "max_completion_tokens"):
        if value is None:
            assert completion_cap({field: value}) is None
            continue
        with pytest.raises(InvalidRequest, match=field):
            completion_cap({field: value})
    assert completion_cap({"max_tokens": 7, "max_completion_tokens": 9}) == 9
