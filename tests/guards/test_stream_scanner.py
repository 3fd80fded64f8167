"""The stream redactor: what the client receives equals the non-streamed redaction, however it is chunked."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.guards.leaks import CanaryScanner, SystemPromptLeak, make_canary
from sidecar.guards.redact import CombinedScanner, OutputScanner, Scanner, apply_actions
from sidecar.guards.stream import StreamRedactor
from tests.guards.cases.output_cases import Case, all_cases, make_scanner

SCANNER = make_scanner()
POSITIVES = [c for c in all_cases() if c.kind is not None]
REDACT = {"*": "redact"}


def expected(scanner: Scanner, text: str, actions: Mapping[str, str]) -> str:
    return apply_actions(text, scanner.scan(text), actions).text


def streamed(scanner: Scanner, chunks: Sequence[str], actions: Mapping[str, str], **kw: int) -> str:
    red = StreamRedactor(scanner, actions, **kw)
    return "".join(red.feed(c) for c in chunks) + red.finish()


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("case", POSITIVES, ids=lambda c: c.name)
def test_secret_split_at_every_position_in_two_chunks_is_redacted(case: Case) -> None:
    """Splitting the reply in two at any offset inside or next to the secret still redacts it exactly."""
    want = expected(SCANNER, case.text, REDACT)
    start = case.text.find(case.target)
    for cut in range(max(0, start - 1), min(len(case.text), start + len(case.target) + 2)):
        got = streamed(SCANNER, split_at(case.text, [cut]), REDACT)
        assert got == want, cut
        assert case.target not in got


@pytest.mark.parametrize("case", POSITIVES, ids=lambda c: c.name)
def test_secret_split_at_random_positions_in_three_chunks_is_redacted(case: Case) -> None:
    """Three chunks cut at random offsets (seeded) give the non-streamed redaction every time."""
    rng = random.Random(case.name)
    want = expected(SCANNER, case.text, REDACT)
    for _ in range(20):
        got = streamed(SCANNER, split_at(case.text, rng.sample(range(1, len(case.text)), 2)), REDACT)
        assert got == want


def test_whole_table_streamed_token_by_token_matches() -> None:
    """All cases joined into one long reply and sent 1, 3 or 4 characters at a time redact identically."""
    text = "\n\n".join(c.text for c in all_cases())
    want = expected(SCANNER, text, REDACT)
    for size in (1, 3, 4):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert streamed(SCANNER, chunks, REDACT) == want


_FRAGMENTS = [c.text for c in all_cases()] + [
    " ",
    "\n",
    "  ",
    "the ",
    "and ",
    "4111 ",
    "555 ",
    "-",
    "(",
    "+1 ",
    "0",
    ": ",
    "= ",
    '"',
    "@",
    "sk-",
    "AKIA",
    "password",
    "key",
    "-----BEGIN ",
    "eyJ",
    "://",
    "x@y.z",
    "192.168.",
    "DE89 ",
    "123-45-",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12),
    actions=st.sampled_from(
        [REDACT, {"secret": "redact", "pii": "flag"}, {"pii": "redact", "secret": "block"}, {"*": "off"}]
    ),
    holdback=st.sampled_from([8192, 300]),
)
def test_any_chunking_of_any_reply_equals_the_unstreamed_decision(
    parts: list[str], cuts: list[int], actions: Mapping[str, str], holdback: int
) -> None:
    """Random replies, chunkings and actions: streamed text, findings and block equal the whole-text ones."""
    text = "".join(parts)
    cuts = sorted({c for c in cuts if c < len(text)})
    red = StreamRedactor(SCANNER, actions, holdback=holdback)
    out = "".join(red.feed(c) for c in split_at(text, cuts)) + red.finish()
    whole = apply_actions(text, SCANNER.scan(text), actions)
    assert out == whole.text
    assert red.blocked == whole.blocked
    assert tuple(red.findings) == whole.findings


def test_block_cuts_the_stream_before_the_secret() -> None:
    """With `block`, the client gets the text before the secret, then nothing; the redactor says blocked."""
    key = "gh" + "p_" + "".join(random.Random(3).choices("abcdefghKLMNOP0123456789", k=36))
    red = StreamRedactor(SCANNER, {"secret": "block"})
    out = red.feed("Your token is ") + red.feed(key[:10]) + red.feed(key[10:] + " and more text")
    assert red.blocked
    assert out + red.finish() + red.feed("late") == "Your token is "
    assert [f.kind for f in red.findings] == ["secret:github"]


def test_flag_passes_text_through_but_reports() -> None:
    """With `flag`, the text is unchanged but the finding is reported with whole-reply offsets."""
    text = "mail jane.doe@acme-corp.com now"
    red = StreamRedactor(SCANNER, {"pii": "flag"})
    out = "".join(red.feed(ch) for ch in text) + red.finish()
    assert out == text
    assert [(f.start, f.end, f.kind) for f in red.findings] == [(5, 27, "pii:email")]


def test_prose_is_held_back_only_to_the_last_word() -> None:
    """In plain prose the redactor holds back the unfinished last word, nothing more; a finished
    one-letter word is held too, since it could begin a letter-by-letter spaced secret."""
    text = "This is a perfectly ordinary answer about rate limiting and caching strategies. " * 5
    red = StreamRedactor(SCANNER, REDACT)
    for end in range(3, len(text), 3):
        red.feed(text[end - 3 : end])
        received = text[:end]
        last_word = len(received) - (received.rfind(" ") + 1)
        if received.endswith(" a "):
            assert red.held == 2  # `a ` may begin `a b c d …`
        elif received[-4:-1] == " a " and received[-1] != " ":
            assert red.held == 3  # `a p` too, until `p` turns out to be a longer word
        else:
            assert red.held == last_word


def test_hold_back_never_exceeds_the_cap_plus_one_pattern() -> None:
    """A long run that could start a match is released once the buffer passes the configured cap."""
    red = StreamRedactor(SCANNER, REDACT, holdback=256)
    worst = 0
    for _ in range(400):
        red.feed("x" * 50)
        worst = max(worst, red.held)
    assert worst <= 256 + SCANNER.max_width


def test_leak_scanners_stream_like_the_whole_text() -> None:
    """A verbatim system-prompt run and a spaced-out canary are redacted identically streamed or not."""
    canary = make_canary()
    system = (
        f"<!-- {canary} -->\nYou are AcmeBot. "
        "Never reveal the discount codes for enterprise customers under any circumstances."
    )
    scanner = CombinedScanner(OutputScanner(), SystemPromptLeak(system), CanaryScanner(canary))
    reply = (
        "Sure. My rules: never reveal the discount codes for enterprise customers under any circumstances. "
        f"Marker {' '.join(canary)} end; contact jane@acme-corp.com."
    )
    actions = {"*": "redact"}
    want = expected(scanner, reply, actions)
    assert "[REDACTED:leak:system_prompt]" in want and "[REDACTED:leak:canary]" in want
    rng = random.Random(5)
    for _ in range(50):
        cuts = rng.sample(range(1, len(reply)), rng.randint(1, 20))
        assert streamed(scanner, split_at(reply, cuts), actions) == want


PEM_HEADER = "-" * 5 + "BEGIN RSA PRIVATE KEY" + "-" * 5
ADVERSARIAL = [
    "a" * 1_000_000,
    "@" * 1_000_000,
    "a@" * 500_000,
    "a." * 500_000 + "@",
    "1" * 1_000_000,
    "1 " * 500_000,
    "+1 " * 333_333,
    "(1" * 500_000,
    "0 1" * 333_333,
    "sk-" * 333_333,
    "sk-" + "a" * 999_997,
    PEM_HEADER * 32_000,
    PEM_HEADER + "A" * 999_000,
    "eyJ" + "a" * 500_000 + ".eyJ" + "b" * 499_000,
    "://" * 333_333,
    "://a:" * 200_000,
    "password=" * 111_111,
    "password = " + "'" * 999_000,
    "AA00" * 250_000,
    ":a:" * 333_333,
    "1.1." * 250_000,
    "AWS secret" * 100_000,
    "key" * 333_333,
    "DE89 " * 200_000,
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda t: repr(t[:12]))
def test_one_megabyte_adversarial_input_completes(text: str) -> None:
    """Pathological 1 MB replies scan to completion (no catastrophic backtracking) with sane findings."""
    findings = SCANNER.scan(text)
    assert all(0 <= f.start < f.end <= len(text) for f in findings)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


@pytest.mark.parametrize("text", ADVERSARIAL[::4], ids=lambda t: repr(t[:12]))
def test_one_megabyte_adversarial_stream_completes(text: str) -> None:
    """The same inputs streamed in 4 KB chunks complete and give the non-streamed result."""
    chunks = [text[i : i + 4096] for i in range(0, len(text), 4096)]
    assert streamed(SCANNER, chunks, REDACT) == expected(SCANNER, text, REDACT)


LEAK_SYSTEM = (
    "You are AcmeBot. Never reveal the discount codes for enterprise customers under any circumstances. "
    "Escalate billing disputes to a human agent within one business day."
)


def test_back_to_back_leaked_passages_stream_as_one_finding() -> None:
    """Two verbatim passages of the system message written one after the other are one finding (one
    redaction), streamed or not, wherever the stream is cut."""
    scanner = SystemPromptLeak(LEAK_SYSTEM)
    reply = (
        "Rules: never reveal the discount codes for enterprise customers under any "
        "escalate billing disputes to a human agent within one business day. Done."
    )
    want = expected(scanner, reply, REDACT)
    assert want.count("[REDACTED:leak:system_prompt]") == 1
    for cut in range(1, len(reply)):
        assert streamed(scanner, split_at(reply, [cut]), REDACT) == want, cut


def test_leak_scanner_holds_back_only_the_last_word_of_unrelated_prose() -> None:
    """With the system-prompt check on, prose that shares no word with the system message is held
    back no more than without it: the unfinished last word, not the last `min_words` words."""
    scanner = CombinedScanner(SCANNER, SystemPromptLeak(LEAK_SYSTEM))
    text = "This is my perfectly ordinary reply about rate limiting with caching strategies. " * 5
    red = StreamRedactor(scanner, REDACT)
    for end in range(3, len(text), 3):
        red.feed(text[end - 3 : end])
        received = text[:end]
        assert red.held == len(received) - (received.rfind(" ") + 1)


_SECRET_VALUE = "s3" + "cr3tV4lue" + "99xQ"
_FOLDING = [
    f"The paſsword = {_SECRET_VALUE} here",  # long s: case-insensitive `s`, not lower-case `s`
    f"apıkey={_SECRET_VALUE} and api_\u212aey: {_SECRET_VALUE}",  # dotless i, Kelvin sign
    f"\u0130key {_SECRET_VALUE} İSTANBUL api_key = {_SECRET_VALUE}",  # lower-casing adds a character
    f"“quoted” — token: {_SECRET_VALUE} — café 4111 1111 1111 1111 😀 x@y.org",
    f"short: key={_SECRET_VALUE}",
    f"İ then paſsword = {_SECRET_VALUE} and apıkey={_SECRET_VALUE} api_key={_SECRET_VALUE}",
]


@pytest.mark.parametrize("text", _FOLDING, ids=range(len(_FOLDING)))
def test_non_ascii_and_case_folding_characters_stream_like_the_whole_text(text: str) -> None:
    """Characters that case-insensitive matching folds to ASCII (ſ, ı, K, İ) and other non-ASCII text
    take the slow path of every shortcut: streamed one character at a time or in random chunks, the
    result equals the whole-text redaction."""
    want = expected(SCANNER, text, REDACT)
    assert streamed(SCANNER, list(text), REDACT) == want
    rng = random.Random(text)
    for _ in range(20):
        cuts = rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 8)))
        assert streamed(SCANNER, split_at(text, cuts), REDACT) == want


def test_a_caller_pattern_without_anchors_streams_like_the_whole_text() -> None:
    """An extra pattern with no literal anchor turns the short-text shortcuts off; the stream stays
    exact."""
    scanner = OutputScanner(extra_patterns=[("secret:ticket", r"TCK[0-9]{6}")])
    text = "see the ticket TCK123456 and the next one, TCK654321, for a 4111 1111 1111 1111 refund"
    want = expected(scanner, text, REDACT)
    assert want.count("[REDACTED:secret:ticket]") == 2
    for size in (1, 2, 5):
        assert streamed(scanner, [text[i : i + size] for i in range(0, len(text), size)], REDACT) == want


_LEAK_WORDS = [*LEAK_SYSTEM.replace(".", "").split(), "Other", "words", "é1", "_", "İ", "4111"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(st.tuples(st.integers(0, len(_LEAK_WORDS) - 1), st.integers(1, 9)), max_size=12),
    seps=st.lists(st.sampled_from([" ", "  ", ", ", ". ", "\n", "-", "_", "é", "’"]), min_size=1),
    cuts=st.lists(st.integers(min_value=1, max_value=600), max_size=10),
    min_words=st.sampled_from([2, 3, 8]),
)
def test_any_chunking_of_replies_quoting_the_system_message_equals_the_whole_text(
    picks: list[tuple[int, int]], seps: list[str], cuts: list[int], min_words: int
) -> None:
    """Replies stitched from runs of the system message's words and other words, cut anywhere: the
    leak check (alone and with the shared scanner) redacts them exactly as the whole text."""
    words = [w for i, n in picks for w in _LEAK_WORDS[i : i + n]]
    text = "".join(w + seps[k % len(seps)] for k, w in enumerate(words))
    chunks = split_at(text, sorted({c for c in cuts if c < len(text)}))
    leak = SystemPromptLeak(LEAK_SYSTEM, min_words=min_words)
    for scanner in (leak, CombinedScanner(SCANNER, leak)):
        assert streamed(scanner, chunks, REDACT) == expected(scanner, text, REDACT)
