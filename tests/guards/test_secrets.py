"""Secret detection details: exact values, extension points, placeholders, and the action map."""

from __future__ import annotations

import itertools
import random
import re
import string

import pytest

from sidecar.guards.redact import OutputScanner, apply_actions, resolve_action
from sidecar.guards.secrets import (
    SECRET_SPECS,
    SIDECAR_KEY_REGEX,
    PatternSpec,
    is_placeholder,
    shannon_entropy,
    spec_from_regex,
)
from sidecar.model import Finding
from tests.guards.cases.output_cases import all_cases

RNG = random.Random(11)


def rand(n: int) -> str:
    return "".join(RNG.choices(string.ascii_letters + string.digits, k=n))


def test_provider_key_and_admin_token_are_found_by_exact_value() -> None:
    """The configured provider key and admin token are caught verbatim even in shapes no pattern knows."""
    provider, admin = "pk." + rand(30), "adm:" + rand(24)
    scanner = OutputScanner(provider_key=provider, admin_token=admin)
    text = f"prefix{provider}suffix and {admin}."
    kinds = [(f.kind, text[f.start : f.end]) for f in scanner.scan(text)]
    assert kinds == [("secret:provider_key", provider), ("secret:admin_token", admin)]


def test_short_exact_values_are_ignored() -> None:
    """An exact value shorter than 8 characters is not matched (it would redact ordinary words)."""
    scanner = OutputScanner(admin_token="admin")
    assert scanner.scan("the admin panel") == []


def test_sidecar_key_shape_is_built_in() -> None:
    """A real key of this sidecar (sidecar.auth.keyformat) is detected as `secret:sidecar`, and the
    guard's pattern is the one the key format publishes."""
    from sidecar.auth.keyformat import KEY_REGEX, make_key, new_key_id

    assert SIDECAR_KEY_REGEX.replace("A-Za-z0-9", "0-9A-Za-z") == KEY_REGEX
    key = make_key(new_key_id())
    assert re.fullmatch(SIDECAR_KEY_REGEX, key)
    assert [f.kind for f in OutputScanner().scan(f"key: {key}")] == ["secret:sidecar"]


def test_extra_patterns_and_exact_values_extend_the_scanner() -> None:
    """A caller's regex (tuple or PatternSpec) and extra exact values produce findings of their kinds."""
    scanner = OutputScanner(
        extra_patterns=[
            ("secret:internal", r"INT-[0-9]{6}-[A-Z]{4}"),
            spec_from_regex("secret:ws", r"WS_[a-z]{12}", ws_free=True),
        ],
        extra_exact=[("secret:db", "hunter2hunter2")],
    )
    text = "a INT-123456-ABCD b WS_abcdefghijkl c hunter2hunter2"
    assert [f.kind for f in scanner.scan(text)] == ["secret:internal", "secret:ws", "secret:db"]


def test_unbounded_extra_pattern_is_refused() -> None:
    """A pattern with an unbounded repeat is refused at construction so the stream hold-back stays bounded."""
    with pytest.raises(ValueError, match="unbounded"):
        OutputScanner(extra_patterns=[("secret:x", r"X-[a-z]+")])


@pytest.mark.parametrize(
    "value",
    [
        "YOUR_API_KEY",
        "sk-your-key-here",
        "xxxxxxxxxxxxxxxxxxxxxxxx",
        "AK" + "IAIOSFODNN7EXAMPLE",
        "<api-key>",
        "${TOKEN}",
        "aaaaaaaaaaaaaaaaaaaa",
        "sk-...",
        "REDACTED_TOKEN",
    ],
)
def test_placeholders_are_recognised(value: str) -> None:
    """Documentation stand-ins are placeholders."""
    assert is_placeholder(value)


def test_random_tokens_are_not_placeholders() -> None:
    """Random tokens are not placeholders even when a short word such as `todo` appears inside by chance."""
    assert not is_placeholder("Ab3" + "todo" + rand(30))
    assert all(not is_placeholder(rand(40)) for _ in range(200))


def test_entropy_separates_random_from_repetitive() -> None:
    """A random 40-character token carries far more entropy per character than a repeated pattern."""
    assert shannon_entropy(rand(40)) > 4.0 > shannon_entropy("abababababababababab")


def test_pattern_spec_reports_bounded_width() -> None:
    """Every spec knows how far a match attempt can reach (the stream uses it to size the hold-back)."""
    spec = PatternSpec("secret:t", re.compile(r"T-[0-9]{4,8}"))
    assert 6 < spec.width < 20


@pytest.mark.parametrize(
    ("kind", "actions", "want"),
    [
        ("secret:aws", {"secret": "block", "secret:aws": "flag"}, "flag"),
        ("secret:github", {"secret": "block", "secret:aws": "flag"}, "block"),
        ("pii:email", {"*": "off"}, "off"),
        ("pii:email", {}, "redact"),
        ("leak:canary", {"leak": "block", "*": "off"}, "block"),
    ],
)
def test_longest_configured_prefix_decides_the_action(kind: str, actions: dict[str, str], want: str) -> None:
    """A per-kind action beats its family's, a family beats `*`, and unconfigured kinds are redacted."""
    assert resolve_action(kind, actions) == want


def test_apply_actions_redacts_flags_and_drops() -> None:
    """`redact` replaces the span with a marker, `flag` keeps it and reports it, `off` drops it entirely."""
    text = "a SECRET b mail c IP"
    findings = [Finding(2, 8, "secret:x"), Finding(11, 15, "pii:email"), Finding(18, 20, "pii:ip")]
    d = apply_actions(text, findings, {"secret": "redact", "pii:email": "flag", "pii:ip": "off"})
    assert d.text == "a [REDACTED:secret:x] b mail c IP"
    assert not d.blocked
    assert [f.kind for f in d.findings] == ["secret:x", "pii:email"]


def test_apply_actions_block_returns_the_text_before_the_blocking_finding() -> None:
    """`block` marks the decision blocked and keeps only the (redacted) text before the blocking span."""
    text = "x@y.io then SECRET then more"
    findings = [Finding(0, 6, "pii:email"), Finding(12, 18, "secret:x")]
    d = apply_actions(text, findings, {"pii": "redact", "secret": "block"})
    assert d.blocked
    assert d.text == "[REDACTED:pii:email] then "


def test_unknown_action_is_an_error() -> None:
    """A misspelled action fails loudly instead of silently letting the secret through."""
    with pytest.raises(ValueError, match="unknown output action"):
        apply_actions("abc", [Finding(0, 1, "secret:x")], {"secret": "redcat"})


def test_scanner_is_direction_agnostic_on_user_text() -> None:
    """The same scanner redacts a user's message before it leaves for the provider."""
    user = (
        "Please debug: my key is "
        + "AK"
        + "IA"
        + "".join(RNG.choices(string.ascii_uppercase + string.digits, k=16))
    )
    scanner = OutputScanner()
    out = apply_actions(user, scanner.scan(user), {"*": "redact"}).text
    assert out == "Please debug: my key is [REDACTED:secret:aws]"


def test_findings_are_sorted_and_do_not_overlap() -> None:
    """When detectors overlap (a GitHub token as a URL password) one finding survives, sorted by position."""
    tok = "gh" + "p_" + rand(36)
    text = f"https://user:{tok}@github.com/org/repo.git and password = '{rand(16)}9'"
    findings = OutputScanner().scan(text)
    assert [f.kind for f in findings] == ["secret:github", "secret:generic"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def _generic_values(text: str, scanner: OutputScanner) -> list[str]:
    return [text[f.start : f.end] for f in scanner.scan(text) if f.kind == "secret:generic"]


@pytest.mark.parametrize(
    "assignment",
    [
        "credentials" + "a" * 24 + "\"'" + "    " + ": {v}",  # operator at the farthest reach
        "password: {v}",
        "API_KEY  =  '{v}'",
        'db.passphrase => "{v}"',
        "token:={v}",
    ],
)
def test_assignment_in_long_prose_is_found_where_operators_are_rare(assignment: str) -> None:
    """A `password=`-style assignment is found in a long answer with few `:`/`=` (windowed search)."""
    value = "Zq7" + rand(14) + "!x"
    prose = "The token bucket keeps one key per client and refills it slowly. " * 200
    line = assignment.format(v=value)
    text = prose + line + "\n" + prose
    assert _generic_values(text, OutputScanner()) == [value]
    assert _generic_values(line, OutputScanner()) == [value]


def test_windowed_and_full_anchor_search_agree() -> None:
    """Seeded random texts mixing keywords, operators and values give the same generic findings
    whether operators are rare (windowed anchor search) or padded out to be dense (full search)."""
    rng = random.Random(5)
    pieces = ["password", "Secret", "api_key", "token", "key", "pwd", "credentials", ":", "=", "=>", " ",
              "  ", "\t", "'", '"', "]", "_x", ".y", "-", "\n", "word ", "Zq7" + rand(12), "ab",
              "PASSPHRASE", "api_\u212aey", "pa\u017fsword", "ap\u0131key", "_" + "n" * 21, "`"]  # fmt: skip
    scanner = OutputScanner(pii=False)

    def generic(text: str, at: int) -> list[tuple[int, int]]:
        return [(f.start - at, f.end - at) for f in scanner.scan(text) if f.kind == "secret:generic"]

    found = 0
    for _ in range(300):
        core = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
        sparse = "x" * 3000 + "\n" + core + "\n" + "y" * 3000  # few operators: windows
        dense = ":=" * 3000 + "\n" + core + "\n" + ":=" * 3000  # many operators: full search
        got = generic(sparse, 3001)
        assert got == generic(dense, 6001), core
        found += bool(got)
    assert found > 10


@pytest.mark.parametrize("wrap", ['fetch("{k}", {{}})', "«{k}»", "[{k}]", "é{k}é", "(x,{k};y)", "`{k}`"])
def test_token_found_between_brackets_quotes_and_non_ascii(wrap: str) -> None:
    """A provider key wrapped in brackets, quotes or non-ASCII letters is still caught (the long-token
    gate splits words at such characters)."""
    key = "sk-proj-" + rand(40)
    text = "x = 1\n" + wrap.format(k=key) + "\n"
    found = [(f.kind, text[f.start : f.end]) for f in OutputScanner().scan(text)]
    assert ("secret:openai", key) in found


def test_generic_anchor_filters_admit_every_assignment_the_regex_matches() -> None:
    """The `password=` row's per-keyword filters (run over the lower-case text when operators are
    dense) match at every keyword occurrence where the row's own regex matches, so the fast path
    loses nothing: checked on the case table and on seeded mixes of names, case-folding characters,
    long name tails, quotes and operators."""
    spec = next(s for s in SECRET_SPECS if s.kind == "secret:generic")
    rng = random.Random(9)
    pieces = ["Pass", "PASSWORD", "passphrase", "pwd", "SECRET", "token", "api_key", "apiKey", "Credentials",
              "api_\u212aey", "pa\u017fsword", "ap\u0131key", "\u0130", "_" + "n" * 20, "x" * 5, ":", "=",
              ":=", "=>", " ", "\t", "'", '"', "`", "]", "\n", "Zq7" + rand(12), "$", "{", "é"]  # fmt: skip
    texts = [c.text for c in all_cases()]
    texts += ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 25))) for _ in range(3000)]
    checked = 0
    for text in texts:
        low = text.lower() if len(text.lower()) == len(text) else text.replace("\u0130", "i").lower()
        for anchor, filt in zip(spec.anchors, spec.anchor_filters, strict=True):
            i = low.find(anchor)
            while i != -1:
                if spec.regex.match(text, i):
                    assert filt.match(low, i), (text, i)
                    checked += 1
                i = low.find(anchor, i + 1)
    assert checked > 500
