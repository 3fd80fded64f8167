"""Pattern compiler: turns the detector tables (`PatternSpec` rows) into named, grouped rows.

`compile_rows` sorts every row into the group whose cheap gate can skip it (`LiteralRow`s behind
their anchors, `LongRow`s behind the text's long token runs, `NumberRow`s behind number runs,
`SeedRow`s behind a seed regex or class-map shape, `TextRow`s and `PlainRow`s that always run)
and derives the gates themselves from the parsed regexes: what a short text must contain for any
row to match (`quick`), what must occur where a row's match could still be open (`open_quick`,
`loose_gates`). The matcher (`matcher.py`) only reads the resulting `RowTable`. Everything here
runs once, when a scanner is built.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from re import _parser as _sre_parser  # type: ignore[attr-defined]
from typing import Any, NamedTuple

from sidecar.guards.secrets import PatternSpec


class ExactRow(NamedTuple):
    """A configured exact value (the provider key, the admin token)."""

    priority: int
    kind: str
    value: str


Plan = tuple[tuple[str, tuple[str, ...], int, "re.Pattern[str] | None"], ...]
"""Per anchor of a row: the anchor, what must precede it (`anchor_after`, empty for anything), how
far back that reaches, and its `anchor_filters` regex if any."""

Gate = tuple[tuple[str, Any], ...]
"""How `open_start` can tell that a row's `start` regex cannot match in a range: pairs of a
haystack (`text`, `lower` for the lower-case text, `cls` for the class map) and a needle, one of
which must start in the range."""


class LiteralRow(NamedTuple):
    """Matches start at one of the row's literal anchors (`ci`: in the lower-case text)."""

    priority: int
    spec: PatternSpec
    ci: bool
    long_value: int  # the value is a run of token characters at least this long (0: unknown)
    plan: Plan
    rare: str  # one rare character per anchor, or "" (see `rare_chars`)


class LongRow(NamedTuple):
    """A long token with literal anchors, run only when an anchor occurs in the long token runs."""

    priority: int
    spec: PatternSpec
    needles: tuple[bytes, ...]


class TextRow(NamedTuple):
    """Anchored, but neither at the match start nor inside a long token: searched per anchor."""

    priority: int
    spec: PatternSpec


class NumberRow(NamedTuple):
    """Runs only inside number runs with enough digits and the separators its regex needs."""

    priority: int
    spec: PatternSpec
    min_digits: int
    need: str
    need_any: frozenset[str]


class SeedRow(NamedTuple):
    """Tried near the matches of a seed regex (`spec.anchor_re`), or of a class-map `shape`."""

    priority: int
    spec: PatternSpec
    seed_prefix: str
    shape: re.Pattern[bytes] | None


class PlainRow(NamedTuple):
    """No anchor at all: the regex runs over the whole text."""

    priority: int
    spec: PatternSpec


class LongGroup(NamedTuple):
    """Long-token rows sharing an anchor prefix, checked once for the family (`sk-…`, `gh…`)."""

    gate: bytes
    rows: tuple[LongRow, ...]


@dataclass(frozen=True, slots=True)
class RowTable:
    """Everything the matcher needs, grouped by gate; built once by `compile_rows`."""

    specs: tuple[PatternSpec, ...]
    email: bool
    exact: tuple[ExactRow, ...]
    exact_values: tuple[tuple[str, str], ...]
    lit_rows: tuple[LiteralRow, ...]
    long_groups: tuple[LongGroup, ...]
    text_rows: tuple[TextRow, ...]
    num_rows: tuple[NumberRow, ...]
    seed_rows: tuple[SeedRow, ...]
    plain_rows: tuple[PlainRow, ...]
    loose: tuple[PatternSpec, ...]
    loose_gates: tuple[tuple[PatternSpec, Gate | None], ...]
    bare_digits: int
    quick: re.Pattern[str] | None
    open_quick: re.Pattern[str] | None
    open_reach: int
    loose_max_width: int
    need_long: bool
    any_ci: bool
    ws_width: int
    max_width: int


def compile_rows(
    specs: Sequence[PatternSpec], exact: Sequence[tuple[str, str]], *, email: bool, email_width: int
) -> RowTable:
    """Group `specs` (in priority order) and `exact` values into a `RowTable`."""
    ws_widths = [s.width for s in specs if s.ws_free] + ([email_width] if email else [])
    loose = tuple(s for s in specs if not s.ws_free)
    loose_gates = tuple((s, start_gate(s)) for s in loose)
    exact_rows = tuple(ExactRow(prio - len(exact), kind, value) for prio, (kind, value) in enumerate(exact))
    long_rows: dict[bytes, list[LongRow]] = {}
    lit_rows: list[LiteralRow] = []
    text_rows: list[TextRow] = []
    num_rows: list[NumberRow] = []
    seed_rows: list[SeedRow] = []
    plain_rows: list[PlainRow] = []
    for prio, spec in enumerate(specs):
        if spec.region is not None:
            num_rows.append(NumberRow(prio, spec, spec.min_digits, spec.need, frozenset(spec.need_any)))
        elif spec.anchor_re is not None:
            shape = re.compile(re.escape(spec.shape)) if spec.shape else None
            seed_rows.append(SeedRow(prio, spec, literal_prefix(spec.anchor_re), shape))
        elif not spec.anchors:
            plain_rows.append(PlainRow(prio, spec))
        elif (
            spec.ws_free
            and not spec.anchors_ci
            and spec.min_width >= LONG_WORD
            and spec.anchor_back is not None
            and token_chars_only(spec, None)
        ):
            needles = tuple(a.encode() for a in spec.anchors)
            long_rows.setdefault(long_gate(needles), []).append(LongRow(prio, spec, needles))
        elif spec.anchors_ci or spec.anchor_back == 0:
            # a value that is itself a run of token characters this long, when it is one at all
            long_value = (
                spec.value_min if spec.value_min >= LONG_WORD and token_chars_only(spec, spec.group[0]) else 0
            )
            rare = "" if spec.anchors_ci else rare_chars(spec.anchors)
            lit_rows.append(LiteralRow(prio, spec, spec.anchors_ci, long_value, anchor_plan(spec), rare))
        else:
            text_rows.append(TextRow(prio, spec))
    long_groups = tuple(LongGroup(gate, tuple(rows)) for gate, rows in long_rows.items())
    # Number runs with fewer digits than this and no separator match no number row: only rows
    # that need no separator could, and they need at least this many digits.
    seps = frozenset(" ().+/-")  # the class map's `1`
    bare_digits = min(
        (
            r.min_digits
            for r in num_rows
            if not (r.need and r.need in seps) and not (r.need_any and r.need_any <= seps)
        ),
        default=0,
    )
    gates = [g for _, g in loose_gates]
    ws_width = max(ws_widths, default=0)
    return RowTable(
        specs=tuple(specs),
        email=email,
        exact=exact_rows,
        exact_values=tuple(exact),
        lit_rows=tuple(lit_rows),
        long_groups=long_groups,
        text_rows=tuple(text_rows),
        num_rows=tuple(num_rows),
        seed_rows=tuple(seed_rows),
        plain_rows=tuple(plain_rows),
        loose=loose,
        loose_gates=loose_gates,
        bare_digits=bare_digits,
        quick=quick_gate(lit_rows, text_rows, plain_rows, num_rows, seed_rows, email),
        open_quick=open_gate(gates) if all(g is not None for g in gates) else None,
        open_reach=max((len(n) for g in gates if g for _, n in g), default=1),
        loose_max_width=max((s.width for s in loose), default=0),
        need_long=bool(long_groups) or any(r.long_value for r in lit_rows),
        any_ci=any(r.ci for r in lit_rows),
        ws_width=ws_width,
        max_width=max([ws_width, *(s.width for s in loose), *(len(v) for _, v in exact)]),
    )


LONG_WORD = 20
"""Token detectors at least this long are gated on anchors inside token-character runs this long."""


LONG_NEEDLE = b"a" * LONG_WORD


TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:/?&%+=~")
"""Every character a long-token row can consume (checked per row by `token_chars_only`). `?` is
also how the aligned view shows any non-ASCII character, so case-insensitive classes stay covered."""


WORD_TABLE = bytes(97 if b in TOKEN_CHARS else 32 for b in range(256))


CLASS_TABLE = bytes(
    65 if 65 <= b <= 90 else 48 if 48 <= b <= 57 else 49 if b in b" ().+/-" else 46 for b in range(256)
)
"""One byte class per character: capitals `A`, digits `0`, other number characters `1`, the rest `.`
(the rows' `shape` and the number runs both read it)."""


NUM_CLASS_RUN = re.compile(rb"0[01]{5,}")
"""`NUMBER_RUN` (`[0-9][0-9 ().+/-]{5,}`) over the class map: the same spans, found faster."""


_FOLDS = "\u0130\u0131\u017f\u212a"
"""Non-ASCII characters that case-insensitive matching equates with ASCII letters (İ ı ſ K)."""


_DIGITS = frozenset("0123456789")


def start_gate(spec: PatternSpec) -> Gate | None:
    """What must occur where `spec.start` matches, when that is cheap to look for.

    Rows whose matches start exactly at a case-insensitive anchor use the anchors (the scanner finds
    them the same way); a `shape` row its shape in the class map; otherwise the start regex's
    literal prefix, or the few characters it can begin with (digits as one class-map search), read
    from the parsed regex. None: always run the regex.
    """
    if spec.anchors and spec.anchors_ci and spec.anchor_back == 0 and not spec.back_chars:
        return tuple(("lower", a) for a in spec.anchors)
    if (
        spec.anchors
        and spec.anchor_back == 0
        and not spec.back_chars
        and not any(a.isascii() for a in spec.anchors)
    ):
        return tuple(("text", a) for a in spec.anchors)  # `password` in other scripts: never in ASCII text
    if spec.start is None:
        return None
    if spec.shape and spec.start.pattern == "[A-Z]{2}[0-9]{2}":
        return (("cls", spec.shape),)
    prefix = literal_prefix(spec.start)
    if len(prefix) >= 2:
        return (("text", prefix),)
    ci = bool(spec.start.flags & re.IGNORECASE)
    first = _first_chars(list(_sre_parser.parse(spec.start.pattern, spec.start.flags)))
    if first is None:
        return None
    if ci:
        first |= {c.swapcase() for c in first}
        if any(c.isalpha() for c in first):
            first |= set(_FOLDS)
    gate: list[tuple[str, Any]] = []
    if len(first & _DIGITS) >= 3:
        gate.append(("cls", b"0"))  # the class map has every digit as `0`
        first = first - _DIGITS
    if len(first) > 4:
        return None
    gate.extend(("text", c) for c in sorted(first))
    return tuple(gate)


QUICK_TEXT = 48
"""Texts shorter than this (a stream buffer: the last word or two) are first checked with one regex
for anything that could start a row (`quick_gate`); on longer texts that regex costs more than
the rows' own `find`s (it tries its branches at every `a`, `p`, `s`, `t`…)."""


def quick_gate(
    lit_rows: Sequence[LiteralRow],
    text_rows: Sequence[TextRow],
    plain_rows: Sequence[PlainRow],
    num_rows: Sequence[NumberRow],
    seed_rows: Sequence[SeedRow],
    email: bool,
) -> re.Pattern[str] | None:
    """One regex that finds, in the lower-case form of an ASCII text, every place where a row other
    than the long-token rows could find a match: its anchors (lower-cased: for an ASCII text that is
    a superset of both exact and case-insensitive occurrences), a digit for the number rows and the
    IBAN shape, a seed's literal prefix (`:`), `@`. None when some row has no such literal (then
    every text is scanned). A text where it finds nothing has no candidate outside the long-token
    rows.
    """
    if text_rows or plain_rows:
        return None
    parts: list[str] = []
    for row in lit_rows:
        parts.extend(re.escape(a.lower()) for a, _, _, _ in row[4])
    chars: set[str] = set()
    if num_rows:
        chars.update("0123456789")
    for _, spec, prefix, _ in seed_rows:
        if spec.shape == b"AA00":
            chars.update("0123456789")  # the shape has digits
        elif prefix:
            parts.append(re.escape(prefix))
        else:
            return None
    if email:
        chars.add("@")
    if chars:
        parts.append("[" + "".join(re.escape(c) for c in sorted(chars)) + "]")
    return re.compile("|".join(dict.fromkeys(parts))) if parts else None


def open_gate(gates: Sequence[Gate | None]) -> re.Pattern[str] | None:
    """One regex for all of `open_start`'s row gates, matched against the lower-case form of an ASCII
    text (a superset of every gate's occurrences): where it finds nothing in the range, no row can
    be open there."""
    parts: list[str] = []
    for gate in gates:
        assert gate is not None
        for hay, needle in gate:
            if hay == "cls":
                parts.append({b"0": "[0-9]", b"AA00": "[a-z]{2}[0-9]{2}"}[needle])
            else:
                parts.append(re.escape(needle.lower()))
    return re.compile("|".join(dict.fromkeys(parts))) if parts else None


def literal_prefix(regex: re.Pattern[str]) -> str:
    """The literal text every match of `regex` begins with ("" if none, or case-insensitive)."""
    if regex.flags & re.IGNORECASE:
        return ""
    prefix = ""
    for op, av in _sre_parser.parse(regex.pattern, regex.flags):
        if str(op) != "LITERAL":
            break
        prefix += chr(av)
    return prefix


def _first_chars(items: list[Any]) -> set[str] | None:
    """The characters a match of the parsed regex `items` can begin with; None when unknown."""
    for op, av in items:
        name = str(op)
        if name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue  # zero width: the next item consumes the first character
        if name == "LITERAL":
            return {chr(av)}
        if name == "IN":
            out: set[str] = set()
            for iop, iav in av:
                iname = str(iop)
                if iname == "LITERAL":
                    out.add(chr(iav))
                elif iname == "RANGE" and iav[1] - iav[0] < 64:
                    out.update(chr(c) for c in range(iav[0], iav[1] + 1))
                else:
                    return None
            return out
        if name == "SUBPATTERN":
            return _first_chars(list(av[3]))
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            return _first_chars(list(av[2])) if av[0] >= 1 else None
        if name == "BRANCH":
            sets = [_first_chars(list(b)) for b in av[1]]
            if any(s is None for s in sets):
                return None
            return set().union(*[s for s in sets if s is not None])
        return None
    return None


_BY_FREQUENCY = " \n\tetaoinsrhldcumfpgwybvkxjqz0123456789_.,-:/=\"'()[]{}<>;`ETAOINSRHLDCUMFPGWYBVKXJQZ"
"""Characters roughly from the most to the least common in replies; others count as rarer still."""


_RARE_FROM = _BY_FREQUENCY.index("E")


def rare_chars(anchors: Sequence[str]) -> str:
    """The rarest character of each anchor when every anchor has one that is rare in text (a capital
    or an unusual symbol), else "": a one-character `find` (memchr, ~40 times faster than a longer
    search) then tells whether any anchor can occur at all."""
    out = ""
    for anchor in anchors:
        c = max(anchor, key=lambda ch: _BY_FREQUENCY.find(ch) % (len(_BY_FREQUENCY) + 1))
        if 0 <= _BY_FREQUENCY.find(c) < _RARE_FROM:
            return ""
        out += c
    return out


def long_gate(needles: tuple[bytes, ...]) -> bytes:
    """What a text's long words must contain for any of `needles` to occur: their common prefix,
    at most two characters, so that rows sharing it (`sk-…`, `gh…`) share the check."""
    return _common_prefix(needles)[:2]


def token_chars_only(spec: PatternSpec, group: int | None) -> bool:
    """True when every character `spec` can consume (in capture `group`, or anywhere) is in
    `TOKEN_CHARS`, so its match (or value) lies inside one run of token characters."""
    parsed: Any = _sre_parser.parse(spec.regex.pattern, spec.regex.flags)
    if group is not None and group != 0:
        found = _find_group(list(parsed), group)
        return found is not None and _consumes_tokens(found)
    return _consumes_tokens(list(parsed))


def _find_group(items: list[Any], group: int) -> list[Any] | None:
    for op, av in items:
        name = str(op)
        if name == "SUBPATTERN":
            if av[0] == group:
                return list(av[3])
            sub = _find_group(list(av[3]), group)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            sub = _find_group(list(av[2]), group)
        elif name == "BRANCH":
            sub = next((g for b in av[1] if (g := _find_group(list(b), group)) is not None), None)
        else:
            continue
        if sub is not None:
            return sub
    return None


def _consumes_tokens(items: list[Any]) -> bool:
    """Walk a parsed regex: literals and classes must stay inside `TOKEN_CHARS` (zero-width
    assertions and back-references consume nothing new); anything else counts as unknown."""
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            if av not in TOKEN_CHARS:
                return False
        elif name == "IN":
            for iop, iav in av:
                iname = str(iop)
                if iname == "LITERAL":
                    if iav not in TOKEN_CHARS:
                        return False
                elif iname == "RANGE":
                    if not all(c in TOKEN_CHARS for c in range(iav[0], iav[1] + 1)):
                        return False
                else:
                    return False
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if not _consumes_tokens(list(av[2])):
                return False
        elif name == "SUBPATTERN":
            if not _consumes_tokens(list(av[3])):
                return False
        elif name == "BRANCH":
            if not all(_consumes_tokens(list(b)) for b in av[1]):
                return False
        elif name not in ("ASSERT", "ASSERT_NOT", "AT", "GROUPREF"):
            return False
    return True


def _common_prefix(needles: tuple[bytes, ...]) -> bytes:
    """The longest prefix shared by all `needles` (possibly empty: then the check always passes)."""
    first = min(needles)
    last = max(needles)
    n = 0
    while n < len(first) and first[n] == last[n]:
        n += 1
    return first[:n]


def anchor_plan(spec: PatternSpec) -> Plan:
    """The row's anchors with their `anchor_after` requirements and filters, ready for `at_seeds`."""
    after = dict(spec.anchor_after)
    filters: tuple[re.Pattern[str] | None, ...] = spec.anchor_filters or (None,) * len(spec.anchors)
    if len(filters) != len(spec.anchors):
        raise ValueError(f"{spec.kind}: one anchor filter per anchor")
    return tuple(
        (a, after.get(a, ()), max(map(len, after.get(a, ("",)))), f)
        for a, f in zip(spec.anchors, filters, strict=True)
    )
