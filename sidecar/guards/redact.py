"""Output scanning and the actions taken on what it finds (redact, block, flag, off).

`OutputScanner` runs the secret and PII tables plus exact values (the provider key, the admin token)
over a text and returns non-overlapping, sorted `Finding`s. `apply_actions` turns findings into an
`OutputDecision` under a per-kind action map. Both are pure and direction-agnostic: the same scanner
redacts PII in user messages on the input side.

The scanner also answers the two questions the stream redactor (`stream.py`) asks of any scanner
(`Scanner` protocol): which matches start at or after a position, including the raw spans of
rejected regex matches (a stream cut must never split one), and the earliest position at which a
match could still be open, i.e. not yet decidable from the text seen so far.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from re import _parser as _sre_parser  # type: ignore[attr-defined]
from typing import Any, NamedTuple, Protocol

from sidecar.guards.pii import EMAIL_WIDTH, PII_SPECS, find_emails
from sidecar.guards.secrets import SECRET_SPECS, PatternSpec, spec_from_regex
from sidecar.model import Finding

ACTIONS = ("redact", "block", "flag", "off")

DEFAULT_ACTIONS: Mapping[str, str] = {
    "secret": "redact",
    "pii": "redact",
    "pii:ip": "flag",
    "leak": "block",
}
"""A sensible starting policy; kinds with no configured action are redacted (fail closed)."""

FALLBACK_ACTION = "redact"
MIN_EXACT_LEN = 8


class Candidate(NamedTuple):
    """A validated match before overlap resolution; `priority` breaks ties (lower wins)."""

    start: int
    end: int
    priority: int
    kind: str


@dataclass(frozen=True, slots=True)
class OutputDecision:
    """What to send: the (redacted) text, whether to block instead, and the findings acted on.

    When `blocked`, `text` is the redacted text before the first blocking finding: exactly what a
    stream has already delivered when it is cut there.
    """

    text: str
    blocked: bool
    findings: tuple[Finding, ...]


class Scanner(Protocol):
    """What the stream redactor needs from a scanner (see module docstring)."""

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]: ...

    def open_start(self, text: str, pos: int) -> int: ...

    def scan(self, text: str) -> list[Finding]: ...


def resolve(candidates: Iterable[Candidate]) -> list[Finding]:
    """Leftmost, then longest, then highest-priority candidates that do not overlap, in order."""
    out: list[Finding] = []
    last_end = -1
    for c in sorted(candidates, key=lambda c: (c.start, -c.end, c.priority)):
        if c.start >= last_end:
            out.append(Finding(c.start, c.end, c.kind))
            last_end = c.end
    return out


def resolve_action(kind: str, actions: Mapping[str, str]) -> str:
    """The action for `kind`: the longest configured prefix wins (`secret:aws`, then `secret`, `*`)."""
    key = kind
    while True:
        action = actions.get(key)
        if action is not None:
            return action
        cut = key.rfind(":")
        if cut < 0:
            break
        key = key[:cut]
    return actions.get("*", FALLBACK_ACTION)


def apply_actions(
    text: str, findings: Sequence[Finding], actions: Mapping[str, str], *, base: int = 0
) -> OutputDecision:
    """Redact, flag or block each finding by its action; `off` findings are dropped.

    `base` is the offset of `text` within the whole reply (the stream applies this to one cut
    segment at a time while findings keep whole-reply offsets).
    """
    parts: list[str] = []
    kept: list[Finding] = []
    at = 0
    for f in findings:
        action = resolve_action(f.kind, actions)
        if action == "off":
            continue
        kept.append(f)
        if action == "block":
            parts.append(text[at : f.start - base])
            return OutputDecision("".join(parts), True, tuple(kept))
        if action == "redact":
            parts.append(text[at : f.start - base])
            parts.append(f"[REDACTED:{f.kind}]")
            at = f.end - base
        elif action != "flag":
            raise ValueError(f"unknown output action {action!r} for {f.kind}")
    if not parts:
        return OutputDecision(text, False, tuple(kept))
    parts.append(text[at:])
    return OutputDecision("".join(parts), False, tuple(kept))


class OutputScanner:
    """Secrets, PII and exact values in one pass set; build once, share across requests.

    `extra_patterns` takes `(kind, regex)` pairs or `PatternSpec`s (e.g. the sidecar's key format);
    `extra_exact` takes `(kind, value)` pairs. The provider key and admin token are matched exactly
    as `secret:provider_key` and `secret:admin_token`. `ip=False` turns IP detection off.
    """

    def __init__(
        self,
        *,
        provider_key: str | None = None,
        admin_token: str | None = None,
        extra_exact: Iterable[tuple[str, str]] = (),
        extra_patterns: Iterable[PatternSpec | tuple[str, str]] = (),
        secrets: bool = True,
        pii: bool = True,
        ip: bool = True,
    ) -> None:
        specs: list[PatternSpec] = [
            p if isinstance(p, PatternSpec) else spec_from_regex(p[0], p[1]) for p in extra_patterns
        ]
        if secrets:
            specs.extend(SECRET_SPECS)
        if pii:
            specs.extend(s for s in PII_SPECS if ip or s.kind != "pii:ip")
        self._specs = tuple(specs)
        self._email = pii
        exact: list[tuple[str, str]] = []
        if provider_key:
            exact.append(("secret:provider_key", provider_key))
        if admin_token:
            exact.append(("secret:admin_token", admin_token))
        exact.extend(extra_exact)
        self._exact = tuple((k, v) for k, v in exact if len(v) >= MIN_EXACT_LEN)
        ws_widths = [s.width for s in specs if s.ws_free] + ([EMAIL_WIDTH] if pii else [])
        self.ws_width = max(ws_widths, default=0)
        self._loose = tuple(s for s in specs if not s.ws_free)
        self._loose_gates = tuple((s, _start_gate(s)) for s in self._loose)
        self._exact_rows = tuple(
            (prio - len(self._exact), kind, value) for prio, (kind, value) in enumerate(self._exact)
        )
        long_rows: dict[bytes, list[tuple[int, PatternSpec, tuple[bytes, ...]]]] = {}
        self._lit_rows: list[tuple[int, PatternSpec, bool, int, Plan, str]] = []
        self._text_rows: list[tuple[int, PatternSpec]] = []
        self._num_rows: list[tuple[int, PatternSpec, int, str, frozenset[str]]] = []
        self._seed_rows: list[tuple[int, PatternSpec, str, re.Pattern[bytes] | None]] = []
        self._plain_rows: list[tuple[int, PatternSpec]] = []
        for prio, spec in enumerate(specs):
            if spec.region is not None:
                self._num_rows.append((prio, spec, spec.min_digits, spec.need, frozenset(spec.need_any)))
            elif spec.anchor_re is not None:
                shape = re.compile(re.escape(spec.shape)) if spec.shape else None
                self._seed_rows.append((prio, spec, _literal_prefix(spec.anchor_re), shape))
            elif not spec.anchors:
                self._plain_rows.append((prio, spec))
            elif (
                spec.ws_free
                and not spec.anchors_ci
                and spec.min_width >= LONG_WORD
                and spec.anchor_back is not None
                and _token_chars_only(spec, None)
            ):
                needles = tuple(a.encode() for a in spec.anchors)
                long_rows.setdefault(_gate(needles), []).append((prio, spec, needles))
            elif spec.anchors_ci or spec.anchor_back == 0:
                # a value that is itself a run of token characters this long, when it is one at all
                long_value = (
                    spec.value_min
                    if spec.value_min >= LONG_WORD and _token_chars_only(spec, spec.group[0])
                    else 0
                )
                rare = "" if spec.anchors_ci else _rare_chars(spec.anchors)
                self._lit_rows.append((prio, spec, spec.anchors_ci, long_value, anchor_plan(spec), rare))
            else:
                self._text_rows.append((prio, spec))
        self._long_groups = tuple((gate, tuple(rows)) for gate, rows in long_rows.items())
        # Number runs with fewer digits than this and no separator match no number row: only rows
        # that need no separator could, and they need at least this many digits.
        seps = frozenset(" ().+/-")  # the class map's `1`
        self._bare_digits = min(
            (r[2] for r in self._num_rows if not (r[3] and r[3] in seps) and not (r[4] and r[4] <= seps)),
            default=0,
        )
        self._quick = _quick_gate(
            self._lit_rows, self._text_rows, self._plain_rows, self._num_rows, self._seed_rows, pii
        )
        gates = [g for _, g in self._loose_gates]
        self._open_quick = _open_gate(gates) if all(g is not None for g in gates) else None
        self._open_reach = max((len(n) for g in gates if g for _, n in g), default=1)
        self._loose_max_width = max((s.width for s in self._loose), default=0)
        self._need_long = bool(self._long_groups) or any(r[3] for r in self._lit_rows)
        self._any_ci = any(r[2] for r in self._lit_rows)
        self.max_width = max(
            [self.ws_width, *(s.width for s in self._loose), *(len(v) for _, v in self._exact)]
        )

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings in `text`, sorted by position."""
        return resolve(self.candidates(text, 0, None))

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]:
        """Validated matches starting at or after `pos`; appends every raw regex span to `raw`.

        Rows are grouped by their gate so one cheap check can skip a whole group: the long-token rows
        when the text has no long word, the number rows when it has no number run. A row whose
        anchors do not occur costs only their `find`s, so a short reply or a stream buffer with
        nothing in it pays little more than one C-level pass per anchor.
        """
        out: list[Candidate] = []
        for prio, kind, value in self._exact_rows:
            i = text.find(value, pos)
            while i != -1:
                out.append(Candidate(i, i + len(value), prio, kind))
                if raw is not None:
                    raw.append((i, i + len(value)))
                i = text.find(value, i + len(value))
        if (
            self._quick is not None
            and len(text) - pos < _QUICK_TEXT
            and text.isascii()
            and self._quick.search(text.lower(), pos) is None
        ):
            # a short ASCII text with no anchor, digit, `:` or `@`: only the long tokens can be in it
            if self._long_groups and len(text) - pos >= LONG_WORD:
                longb, _ = _long_words(text[pos:].encode("ascii"))
                if longb:
                    self._long_candidates(out, raw, text, pos, longb)
            return out
        view = text.encode("ascii", "replace")  # one byte per character: byte offsets are text offsets
        # a long token or value found here starts at or after `pos`, so its run lies in text[pos:]
        longb, longest = (
            _long_words(view[pos:] if pos else view)
            if self._need_long and len(text) - pos >= LONG_WORD
            else (b"", 0)
        )
        if longb:
            self._long_candidates(out, raw, text, pos, longb)
        lower = _lower(text) if self._any_ci else text
        short = len(text) - pos < _FOLLOW_MIN_TEXT
        for prio, spec, ci, long_value, plan, rare in self._lit_rows:
            if long_value and longest < long_value:
                continue  # its value is a run of token characters at least this long; there is none
            if rare:
                for c in rare:
                    if text.find(c, pos) != -1:
                        break
                else:
                    continue  # no anchor's rarest character (`B` of `-----BEGIN`): a memchr, not a search
            hay = lower if ci else text
            if short:  # one `find` per anchor decides most rows without a call
                for anchor, _, _, _ in plan:
                    if hay.find(anchor, pos) != -1:
                        break
                else:
                    continue
            matches = _at_seeds(spec, text, pos, hay, plan)
            if matches:
                _collect(out, raw, prio, spec, text, matches)
        for prio, spec in self._text_rows:
            if spec.anchor_back is not None:
                _collect(out, raw, prio, spec, text, _anchored_literal(spec, text, text, pos))
                continue
            for anchor in spec.anchors:
                if anchor in text:
                    _collect(out, raw, prio, spec, text, spec.regex.finditer(text, pos))
                    break
        cls = view.translate(_CLASS_TABLE) if self._num_rows or self._seed_rows else b""
        if self._num_rows and cls.find(b"0", pos) != -1:
            bare = self._bare_digits
            for start, end in _number_runs(text, pos, cls):
                ndigits = cls.count(b"0", start, end)
                if ndigits < bare and cls.find(b"1", start, end) == -1:
                    continue  # digits alone (a timestamp, an id): too few for the rows that need no separator
                run = text[start:end]
                for prio, spec, min_digits, need, any_of in self._num_rows:
                    if (
                        ndigits >= min_digits
                        and (not need or need in run)
                        and (not any_of or not any_of.isdisjoint(run))
                    ):
                        _collect(out, raw, prio, spec, text, spec.regex.finditer(text, start, end))
        seeds_of: dict[re.Pattern[str], list[int]] = {}
        for prio, spec, seed_prefix, shape in self._seed_rows:
            assert spec.anchor_re is not None
            if shape is not None:
                if shape.search(cls, pos) is None:
                    continue  # the regex engine's literal-prefix scan beats `in` here
                seeds = _find_all(cls, spec.shape, pos)  # aligned: class offsets are text offsets
            else:  # rows sharing a seed regex (the two IPv6 rows) share its pass
                if seed_prefix and text.find(seed_prefix, pos) == -1:
                    continue  # e.g. no `:` at all, so no IPv6 address
                found = seeds_of.get(spec.anchor_re)
                if found is None:
                    found = seeds_of[spec.anchor_re] = [m.start() for m in spec.anchor_re.finditer(text, pos)]
                seeds = found
            if seeds:
                _collect(out, raw, prio, spec, text, _anchored(spec, text, pos, seeds, spec.anchor_back))
        for prio, spec in self._plain_rows:
            _collect(out, raw, prio, spec, text, spec.regex.finditer(text, pos))
        if self._email and text.find("@", pos) != -1:
            prio = len(self._specs)
            for s, e in find_emails(text, pos):
                out.append(Candidate(s, e, prio, "pii:email"))
                if raw is not None:
                    raw.append((s, e))
        return out

    def _long_candidates(
        self, out: list[Candidate], raw: list[tuple[int, int]] | None, text: str, pos: int, longb: bytes
    ) -> None:
        """The long-token rows whose anchors occur in the text's long words (`_long_words`)."""
        for gate, rows in self._long_groups:
            if gate not in longb:
                continue  # one check for a family of anchors (`sk-…`, `gh?_`, `A…`)
            for prio, spec, needles in rows:
                for needle in needles:
                    if needle in longb:
                        _collect(out, raw, prio, spec, text, _anchored_literal(spec, text, text, pos))
                        break

    def open_start(self, text: str, pos: int) -> int:
        """Earliest index >= `pos` where a match may start that later text could still change.

        Whitespace-free patterns can only be open in the last whitespace-free run (and only within
        their width of the end); the others only where their `start` regex matches within their
        width of the end and their `extent` reaches the end; exact values where a suffix of the
        text is a prefix of the value. A row whose start cannot occur in the part of the text
        before the current answer (no anchor, no digit, no `+`…, see `_start_gate`) is skipped
        without running its regex: a stream asks this after every token.
        """
        n = len(text)
        w = max(text.rfind(" ", pos), text.rfind("\n", pos), text.rfind("\t", pos), text.rfind("\r", pos))
        o = max(w + 1, n - self.ws_width, pos)
        cls = b""
        lower = ""
        gates = self._loose_gates
        if self._open_quick is not None and text.isascii():
            lo_min = max(pos, n - self._loose_max_width + 1)
            end = o + self._open_reach - 1
            if lo_min >= o or self._open_quick.search(text[lo_min:end].lower()) is None:
                gates = ()  # nothing that starts a row occurs before `o`
        for spec, gate in gates:
            lo = max(pos, n - spec.width + 1)
            if lo >= o:
                continue
            if gate is not None:
                for hay_name, needle in gate:
                    if hay_name == "cls":
                        if not cls:
                            cls = text.encode("ascii", "replace").translate(_CLASS_TABLE)
                        hay: str | bytes = cls
                    elif hay_name == "lower":
                        if not lower:
                            lower = _lower(text)
                        hay = lower
                    else:
                        hay = text
                    if hay.find(needle, lo, o + len(needle) - 1) != -1:
                        break
                else:
                    continue  # no match can start in [lo, o)
            assert spec.start is not None
            for m in spec.start.finditer(text, lo):
                p = m.start()
                if p >= o:
                    break
                x = spec.extent.match(text, p) if spec.extent is not None else None
                reach = x.end() + spec.extent_margin if x is not None else n
                if reach >= n:
                    o = p
                    break
        for _, value in self._exact:
            i = text.find(value[0], max(pos, n - len(value) + 1), o)
            while i != -1:
                if value.startswith(text[i:]):
                    o = i
                    break
                i = text.find(value[0], i + 1, o)
        return o


LONG_WORD = 20
"""Token detectors at least this long are gated on anchors inside token-character runs this long."""
_LONG = b"a" * LONG_WORD
_TOKEN_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:/?&%+=~")
"""Every character a long-token row can consume (checked per row by `_token_chars_only`). `?` is
also how the aligned view shows any non-ASCII character, so case-insensitive classes stay covered."""
_WORD_TABLE = bytes(97 if b in _TOKEN_CHARS else 32 for b in range(256))
_CLASS_TABLE = bytes(
    65 if 65 <= b <= 90 else 48 if 48 <= b <= 57 else 49 if b in b" ().+/-" else 46 for b in range(256)
)
"""One byte class per character: capitals `A`, digits `0`, other number characters `1`, the rest `.`
(the rows' `shape` and the number runs both read it)."""
_NUM_CLASS_RUN = re.compile(rb"0[01]{5,}")
"""`NUMBER_RUN` (`[0-9][0-9 ().+/-]{5,}`) over the class map: the same spans, found faster."""


Gate = tuple[tuple[str, Any], ...]
"""How `open_start` can tell that a row's `start` regex cannot match in a range: pairs of a
haystack (`text`, `lower` for the lower-case text, `cls` for the class map) and a needle, one of
which must start in the range."""

_FOLDS = "\u0130\u0131\u017f\u212a"
"""Non-ASCII characters that case-insensitive matching equates with ASCII letters (İ ı ſ K)."""
_DIGITS = frozenset("0123456789")


def _start_gate(spec: PatternSpec) -> Gate | None:
    """What must occur where `spec.start` matches, when that is cheap to look for.

    Rows whose matches start exactly at a case-insensitive anchor use the anchors (the scanner finds
    them the same way); a `shape` row its shape in the class map; otherwise the start regex's
    literal prefix, or the few characters it can begin with (digits as one class-map search), read
    from the parsed regex. None: always run the regex.
    """
    if spec.anchors and spec.anchors_ci and spec.anchor_back == 0 and not spec.back_chars:
        return tuple(("lower", a) for a in spec.anchors)
    if spec.start is None:
        return None
    if spec.shape and spec.start.pattern == "[A-Z]{2}[0-9]{2}":
        return (("cls", spec.shape),)
    prefix = _literal_prefix(spec.start)
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


_QUICK_TEXT = 48
"""Texts shorter than this (a stream buffer: the last word or two) are first checked with one regex
for anything that could start a row (`_quick_gate`); on longer texts that regex costs more than
the rows' own `find`s (it tries its branches at every `a`, `p`, `s`, `t`…)."""


def _quick_gate(
    lit_rows: Sequence[tuple[int, PatternSpec, bool, int, Plan, str]],
    text_rows: Sequence[tuple[int, PatternSpec]],
    plain_rows: Sequence[tuple[int, PatternSpec]],
    num_rows: Sequence[tuple[int, PatternSpec, int, str, frozenset[str]]],
    seed_rows: Sequence[tuple[int, PatternSpec, str, re.Pattern[bytes] | None]],
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


def _open_gate(gates: Sequence[Gate | None]) -> re.Pattern[str] | None:
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


def _literal_prefix(regex: re.Pattern[str]) -> str:
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


def _rare_chars(anchors: Sequence[str]) -> str:
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


def _lower(text: str) -> str:
    """`text.lower()` with one character per character, so offsets match the text: `İ` (the only
    character whose lower case is two) becomes `i`, which case-insensitive matching equates with it.

    Case-insensitive rows are looked up in this form whatever the text holds, so a stream buffer and
    the whole reply always agree on where an anchor is.
    """
    low = text.lower()
    return low if len(low) == len(text) else text.replace("\u0130", "i").lower()


def _long_words(b: bytes) -> tuple[bytes, int]:
    """The runs of at least `LONG_WORD` token characters (`_TOKEN_CHARS`) of the aligned text,
    space-joined, and the length of the longest.

    One `translate` (C speed) stands in for a word split: prose rarely has such runs, and code's
    long words are mostly broken up by brackets, quotes and commas, so the long-token detectors
    usually cost little.
    """
    t = b.translate(_WORD_TABLE)
    i = t.find(_LONG)
    if i == -1:
        return b"", 0
    parts = []
    longest = 0
    find = t.find
    while i != -1:
        j = find(b" ", i)
        if j == -1:
            j = len(t)
        parts.append(b[i:j])
        if j - i > longest:
            longest = j - i
        i = find(_LONG, j)
    return b" ".join(parts), longest


def _gate(needles: tuple[bytes, ...]) -> bytes:
    """What a text's long words must contain for any of `needles` to occur: their common prefix,
    at most two characters, so that rows sharing it (`sk-…`, `gh…`) share the check."""
    return _common_prefix(needles)[:2]


def _token_chars_only(spec: PatternSpec, group: int | None) -> bool:
    """True when every character `spec` can consume (in capture `group`, or anywhere) is in
    `_TOKEN_CHARS`, so its match (or value) lies inside one run of token characters."""
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
    """Walk a parsed regex: literals and classes must stay inside `_TOKEN_CHARS` (zero-width
    assertions and back-references consume nothing new); anything else counts as unknown."""
    for op, av in items:
        name = str(op)
        if name == "LITERAL":
            if av not in _TOKEN_CHARS:
                return False
        elif name == "IN":
            for iop, iav in av:
                iname = str(iop)
                if iname == "LITERAL":
                    if iav not in _TOKEN_CHARS:
                        return False
                elif iname == "RANGE":
                    if not all(c in _TOKEN_CHARS for c in range(iav[0], iav[1] + 1)):
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


def _find_all(hay: bytes, needle: bytes, pos: int) -> list[int]:
    out = []
    i = hay.find(needle, pos)
    while i != -1:
        out.append(i)
        i = hay.find(needle, i + 1)
    return out


def _aligned_bytes(text: str) -> bytes:
    """The text as one byte per character (non-ASCII as `?`), so byte offsets are text offsets."""
    return text.encode("ascii", "replace")


def _number_runs(text: str, pos: int, cls: bytes) -> list[tuple[int, int]]:
    """`NUMBER_RUN` spans from `pos`, widened by a leading `(`/`+` and two lookahead characters.

    The search runs on `cls`, the class map of the aligned bytes (`_CLASS_TABLE`: digits `0`, other
    number characters `1`), where a run starts with a literal, so the regex engine
    skips between digits in C instead of testing a character class at every position.
    """
    runs: list[tuple[int, int]] = []
    for m in _NUM_CLASS_RUN.finditer(cls, pos):
        s = m.start()
        if s > pos and text[s - 1] in "(+":
            s -= 1
        runs.append((s, m.end() + 2))
    return runs


def _collect(
    out: list[Candidate],
    raw: list[tuple[int, int]] | None,
    prio: int,
    spec: PatternSpec,
    text: str,
    matches: Iterable[re.Match[str]],
) -> None:
    """Validate each match of `spec` and append it (and its raw span) as a candidate."""
    groups = spec.group
    validate = spec.validate
    for m in matches:
        if raw is not None:
            raw.append(m.span())
        if groups == (0,):
            s, e = m.span()
        else:
            for g in groups:
                s, e = m.span(g)
                if s >= 0:
                    break
        if validate is None or validate(text[s:e]):
            out.append(Candidate(s, e, prio, spec.kind))


def _anchored_literal(spec: PatternSpec, hay: str, text: str, pos: int) -> list[re.Match[str]]:
    """Anchor occurrences of `spec.anchors` in `hay` (text or its lower-case form), then matches."""
    back = spec.anchor_back
    if back == 0 and not spec.back_chars:
        return _at_seeds(spec, text, pos, hay, anchor_plan(spec))
    seeds: list[int] = []
    backs: list[int] = []
    for k, anchor in enumerate(spec.anchors):
        i = hay.find(anchor, pos)
        b = back[k] if isinstance(back, tuple) else (back or 0)
        while i != -1:
            seeds.append(i)
            backs.append(b)
            i = hay.find(anchor, i + 1)
    return _anchored(spec, text, pos, seeds, tuple(backs)) if seeds else []


Plan = tuple[tuple[str, tuple[str, ...], int, "re.Pattern[str] | None"], ...]
"""Per anchor of a row: the anchor, what must precede it (`anchor_after`, empty for anything), how
far back that reaches, and its `anchor_filters` regex if any."""


def anchor_plan(spec: PatternSpec) -> Plan:
    """The row's anchors with their `anchor_after` requirements and filters, ready for `_at_seeds`."""
    after = dict(spec.anchor_after)
    filters: tuple[re.Pattern[str] | None, ...] = spec.anchor_filters or (None,) * len(spec.anchors)
    if len(filters) != len(spec.anchors):
        raise ValueError(f"{spec.kind}: one anchor filter per anchor")
    return tuple(
        (a, after.get(a, ()), max(map(len, after.get(a, ("",)))), f)
        for a, f in zip(spec.anchors, filters, strict=True)
    )


def _at_seeds(spec: PatternSpec, text: str, pos: int, hay: str, plan: Plan) -> list[re.Match[str]]:
    """`_anchored` for rows whose matches start exactly at an anchor (the common case), minus the
    per-seed bookkeeping: sorted anchor positions, one `match` each, leftmost non-overlapping.

    With `follow_chars`, when the text has few operator characters (prose), anchors are searched
    only within `follow_window` before one (`_follow_ranges`): the others could not match anyway.
    An anchor with `anchor_after` requirements is kept only where `hay` ends with one of them (or
    where the characters before it are not all ASCII, so case folding might differ).
    """
    seeds: list[int] = []
    find = hay.find
    ranges = None
    if spec.follow_chars and len(text) - pos >= _FOLLOW_MIN_TEXT:
        ranges = _follow_ranges(spec.follow_chars, spec.follow_window, text, pos)
    if ranges is None and spec.anchor_filters:
        # whole text: each anchor's filter regex finds its occurrences and drops, in C, those where
        # no match can start (anchors that cannot overlap themselves, so `finditer` misses none)
        for _anchor, before, back, filt in plan:
            assert filt is not None
            for m in filt.finditer(hay, pos):
                i = m.start()
                if not before or hay.endswith(before, 0, i) or not text[max(0, i - back) : i].isascii():
                    seeds.append(i)
        ranges = []
    spans = [(pos, len(hay) + 1)] if ranges is None else ranges
    for lo, hi in spans:
        for anchor, before, back, _ in plan:
            end = hi + len(anchor) - 1  # occurrences that start before `hi`
            i = find(anchor, lo, end)
            while i != -1:
                if not before or hay.endswith(before, 0, i) or not text[max(0, i - back) : i].isascii():
                    seeds.append(i)
                i = find(anchor, i + 1, end)
    if not seeds:
        return []
    seeds.sort()
    return _matches_at(spec, text, seeds)


_FOLLOW_DENSITY = 256
"""Windowed anchor search is used while operators are rarer than one per this many characters."""
_FOLLOW_MIN_TEXT = 1024
"""Shorter texts (a stream's buffer) are searched whole: windows would only add overhead."""
_FOLLOW_HEAD = 4096
"""How much text a quick `count` looks at first to give up on windows at once."""


def _matches_at(spec: PatternSpec, text: str, starts: Iterable[int]) -> list[re.Match[str]]:
    """Non-overlapping matches of `spec` starting exactly at the sorted `starts`, keeping only
    those followed by the spec's operator (`follow`) within its window."""
    follow, window = spec.follow, spec.follow_window
    out: list[re.Match[str]] = []
    last_end = -1
    match = spec.regex.match
    for s in starts:
        if s < last_end or (follow is not None and follow.search(text, s, s + window) is None):
            continue
        m = match(text, s)
        if m is not None:
            out.append(m)
            last_end = m.end()
    return out


def _follow_ranges(chars: str, window: int, text: str, pos: int) -> list[tuple[int, int]] | None:
    """Merged ranges `[lo, hi)` of starts with one of `chars` within `window`; None when dense.

    A start `s` qualifies when an operator lies in `[s, s + window)`, i.e. `s` is in
    `(q - window, q]` for an operator at `q`. Operators are found with `str.find` (memchr speed). In
    code (operators on every line) one pass per anchor is cheaper than many small windows, so this
    gives up after a few operators per KB.
    """
    head = pos + _FOLLOW_HEAD
    if sum(text.count(c, pos, head) for c in chars) > _FOLLOW_HEAD // _FOLLOW_DENSITY + 4:
        return None  # dense from the start (code): skip the per-operator loop
    limit = (len(text) - pos) // _FOLLOW_DENSITY + 4
    ops: list[int] = []
    for c in chars:
        q = text.find(c, pos)
        while q != -1:
            ops.append(q)
            if len(ops) > limit:
                return None
            q = text.find(c, q + 1)
    ops.sort()
    ranges: list[tuple[int, int]] = []
    for q in ops:
        lo = max(pos, q - window + 1)
        if ranges and lo <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], q + 1)
        else:
            ranges.append((lo, q + 1))
    return ranges


def _anchored(
    spec: PatternSpec, text: str, pos: int, seeds: list[int], back: int | tuple[int, ...] | None
) -> list[re.Match[str]]:
    """Leftmost non-overlapping matches starting within `back` characters before a seed.

    Every match of the row starts there, so this yields what `finditer` would, trying far fewer
    positions; `follow` skips starts with no operator character within `follow_window`.
    """
    starts: set[int] = set()
    if spec.back_chars:
        chars = spec.back_chars
        limit = back if isinstance(back, int) else 0
        for seed in seeds:
            p = seed
            while p > pos and seed - p < limit and text[p - 1] in chars:
                p -= 1
            starts.add(p)
        seeds = []
    for k, seed in enumerate(seeds):
        b = back[k] if isinstance(back, tuple) else (back or 0)
        if b == 0:
            starts.add(seed)
        else:
            starts.update(range(max(pos, seed - b), seed + 1))
    return _matches_at(spec, text, sorted(starts))


class CombinedScanner:
    """Several scanners as one (e.g. the shared `OutputScanner` plus a per-request leak scanner)."""

    def __init__(self, *scanners: Scanner) -> None:
        self._scanners = scanners

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings of all scanners, sorted by position."""
        return resolve(self.candidates(text, 0, None))

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]:
        """All scanners' candidates; priorities are offset so earlier scanners win ties."""
        out: list[Candidate] = []
        for i, s in enumerate(self._scanners):
            found = s.candidates(text, pos, raw)
            if not found:
                continue
            if i == 0:
                out.extend(found)
            else:
                shift = i * 1_000_000
                out.extend(c._replace(priority=c.priority + shift) for c in found)
        return out

    def open_start(self, text: str, pos: int) -> int:
        """The earliest open start of any scanner."""
        o = len(text)
        for s in self._scanners:
            o = min(o, s.open_start(text, pos))
        return o
