"""PII detection details: checksums decide, invalid ranges are skipped, IP detection can be turned off."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.guards.matcher import aligned_bytes as _aligned_bytes
from sidecar.guards.matcher import number_runs as _number_runs
from sidecar.guards.patterns import CLASS_TABLE as _CLASS_TABLE
from sidecar.guards.pii import NUMBER_RUN, PII_SPECS, find_emails, iban_ok, luhn_ok, ssn_ok
from sidecar.guards.redact import OutputScanner

SCANNER = OutputScanner()


@pytest.mark.parametrize(
    ("number", "ok"), [("79927398713", True), ("79927398710", False), ("0", True), ("18", True)]
)
def test_luhn(number: str, ok: bool) -> None:
    """The Luhn check accepts the textbook example and rejects a changed check digit."""
    assert luhn_ok(number) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("GB82 WEST 1234 5698 7654 32", True),
        ("GB82 WEST 1234 5698 7654 33", False),
        ("GB82WEST12345698765432", True),
        ("GB82 WEST 1234 5698 7654 3", False),
        ("XX82WEST12345698765432", False),
        ("GB00WEST12345698765432", False),
    ],
)
def test_iban_check(value: str, ok: bool) -> None:
    """IBANs need the country's length and mod-97 check digits; spaces are ignored."""
    assert iban_ok(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("123-45-6780", True),
        ("000-12-3456", False),
        ("666-12-3456", False),
        ("900-12-3456", False),
        ("999-12-3456", False),
        ("123-00-4567", False),
        ("123-45-0000", False),
        ("078-05-1120", False),
        ("665-99-9999", True),
        ("899 01 0001", True),
    ],
)
def test_ssn_ranges(value: str, ok: bool) -> None:
    """Area 000, 666 and 9xx, group 00, serial 0000 and famous published numbers are not SSNs."""
    assert ssn_ok(value) is ok


def test_numbers_failing_their_checksum_are_not_pii() -> None:
    """A 16-digit number that fails Luhn and an IBAN with a bad check digit produce no finding."""
    assert SCANNER.scan("order 4539 1488 0343 6468 shipped") == []  # Luhn-valid would be ...6467
    assert SCANNER.scan("IBAN GB82 WEST 1234 5698 7654 33") == []


def test_valid_numbers_are_found_in_text() -> None:
    """A Luhn-valid card, a valid IBAN and an issuable SSN are found with their kinds."""
    text = "card 4539 1488 0343 6467, IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6780."
    assert [f.kind for f in SCANNER.scan(text)] == ["pii:credit_card", "pii:iban", "pii:ssn"]


def test_well_known_test_card_numbers_are_not_pii() -> None:
    """Test numbers with two distinct digits (4111 1111 1111 1111, 4242...) are documentation, not people."""
    assert SCANNER.scan("use 4111 1111 1111 1111 or 4242 4242 4242 4242 in test mode") == []


def test_ip_detection_can_be_turned_off() -> None:
    """With `ip=False` addresses are left alone while other PII is still found."""
    text = "server 203.0.114.7 owner ops@acme.io"
    assert [f.kind for f in SCANNER.scan(text)] == ["pii:ip", "pii:email"]
    assert [f.kind for f in OutputScanner(ip=False).scan(text)] == ["pii:email"]


def test_pii_can_be_turned_off_entirely() -> None:
    """A scanner built with `pii=False` finds secrets only."""
    assert OutputScanner(pii=False).scan("mail ops@acme.io or call +1 415 555 2671") == []


@pytest.mark.parametrize(
    ("text", "emails"),
    [
        ("write to first.last@acme-corp.co.uk today", ["first.last@acme-corp.co.uk"]),
        ("<jane@acme.io>, bob@globex.com", ["jane@acme.io", "bob@globex.com"]),
        ("https://user:pw@host.example.com/x", []),
        ("git@github.com:org/repo.git", []),
        ("lodash@4.17.21 and logo@2x.png", []),
        ("@decorator and a @ b.com", []),
    ],
)
def test_email_finder(text: str, emails: list[str]) -> None:
    """Addresses are found; URL credentials, git remotes, package pins and image names are not addresses."""
    assert [text[s:e] for s, e in find_emails(text)] == emails


@pytest.mark.parametrize(
    "phone",
    [
        "+1 415 555 2671",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "415.555.2671",
        "020 7946 0958",
        "+33 6 12 34 56 78",
    ],
)
def test_phone_formats(phone: str) -> None:
    """International and national phone formats are found as one span."""
    text = f"call {phone} now"
    assert [(f.kind, text[f.start : f.end]) for f in SCANNER.scan(text)] == [("pii:phone", phone)]


@given(st.text(alphabet="0123456789 ().+/-aZ\n\u00e9\u4e2d", max_size=80), st.integers(0, 10))
def test_number_runs_prefilter_finds_every_run(text: str, pos: int) -> None:
    """The byte class-map search finds exactly the number runs the `NUMBER_RUN` regex finds."""
    pos = min(pos, len(text))
    expected = []
    for m in NUMBER_RUN.finditer(text, pos):
        s = m.start() - (m.start() > pos and text[m.start() - 1] in "(+")
        expected.append((s, m.end() + 2))
    assert _number_runs(text, pos, _aligned_bytes(text).translate(_CLASS_TABLE)) == expected


@given(st.text(alphabet="0123456789 ().+/-,aZ\n", max_size=60))
def test_number_row_gates_hold_for_every_raw_match(text: str) -> None:
    """Every raw match of a number row has the digits and characters its gate requires, so the gate
    never hides a match (or a raw span the stream must not cut)."""
    for spec in PII_SPECS:
        if spec.region != "number":
            continue
        for m in spec.regex.finditer(text):
            span = m.group(0)
            assert sum(c.isdigit() for c in span) >= spec.min_digits
            assert spec.need in span
            assert not spec.need_any or any(c in span for c in spec.need_any)
