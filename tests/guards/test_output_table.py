"""Table-driven evaluation of the output scanner on the labelled cases in cases/output_cases.py."""

from __future__ import annotations

import pytest

from sidecar.guards.redact import apply_actions
from tests.guards.cases.output_cases import Case, all_cases, evaluate, hit, make_scanner

SCANNER = make_scanner()
CASES = all_cases()
POSITIVES = [c for c in CASES if c.kind is not None]
NEGATIVES = [c for c in CASES if c.kind is None]


def test_the_table_is_large_and_covers_every_kind() -> None:
    """The table has at least 150 cases and every detector kind has positives and every family negatives."""
    kinds = {c.kind for c in POSITIVES}
    assert len(CASES) >= 150
    assert {
        "secret:openai",
        "secret:anthropic",
        "secret:google",
        "secret:azure",
        "secret:aws",
        "secret:github",
        "secret:gitlab",
        "secret:slack",
        "secret:slack_webhook",
        "secret:discord_webhook",
        "secret:stripe",
        "secret:huggingface",
        "secret:npm",
        "secret:pypi",
        "secret:private_key",
        "secret:jwt",
        "secret:url_password",
        "secret:generic",
        "secret:sidecar",
        "secret:provider_key",
        "secret:admin_token",
        "pii:email",
        "pii:phone",
        "pii:credit_card",
        "pii:iban",
        "pii:ssn",
        "pii:ip",
    } <= kinds
    assert {c.family for c in NEGATIVES} == {"secret", "pii"}


@pytest.mark.parametrize("case", POSITIVES, ids=lambda c: c.name)
def test_positive_is_found_and_redacted(case: Case) -> None:
    """Each planted secret or PII value is found with its kind and does not survive redaction."""
    findings = SCANNER.scan(case.text)
    assert hit(case, findings), findings
    redacted = apply_actions(case.text, findings, {"*": "redact"}).text
    assert case.target not in redacted
    assert f"[REDACTED:{case.kind}]" in redacted


@pytest.mark.parametrize("case", NEGATIVES, ids=lambda c: c.name)
def test_hard_negative_is_left_alone(case: Case) -> None:
    """Placeholders, hashes, versions, dates and checksum failures produce no finding."""
    assert SCANNER.scan(case.text) == []


def test_recall_per_kind_meets_the_goal() -> None:
    """Recall is at least 0.95 for every kind and there is no false positive on the hard negatives."""
    recall, negatives, _ = evaluate()
    for kind, (caught, total) in recall.items():
        assert caught / total >= 0.95, kind
    for family, (clean, total) in negatives.items():
        assert clean == total, family
