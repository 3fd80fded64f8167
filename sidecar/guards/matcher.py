"""Matcher: finds the candidate matches of a compiled `RowTable` in a text, and where a match
could still be open at the end of a text (what a stream must hold back).

Each row group is skipped by its gate (see `patterns.py`): a short ASCII text with no anchor, digit,
`:` or `@` costs one regex search; the long-token rows run only when an anchor occurs in the text's
long token runs; number rows only inside number runs; literal rows only at their anchors. The
per-row work is a `regex.match` at an anchor, not a search, so prose without anchors costs a few
C-level `find`s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

from sidecar.guards.encoded import encoded_candidates
from sidecar.guards.patterns import (
    CLASS_TABLE,
    LONG_NEEDLE,
    LONG_WORD,
    NUM_CLASS_RUN,
    QUICK_TEXT,
    WORD_TABLE,
    Plan,
    RowTable,
    anchor_plan,
)
from sidecar.guards.pii import find_emails
from sidecar.guards.secrets import PatternSpec


class Candidate(NamedTuple):
    """A validated match before overlap resolution; `priority` breaks ties (lower wins)."""

    start: int
    end: int
    priority: int
    kind: str


class Matcher:
    """Runs one `RowTable` over texts; stateless between calls, so one is shared by all requests."""

    def __init__(self, table: RowTable, *, decode: bool = True) -> None:
        t = table
        self.table = t
        self._specs = t.specs
        self._email = t.email
        self._exact = t.exact_values
        self._exact_rows = t.exact
        self._lit_rows = t.lit_rows
        self._long_groups = t.long_groups
        self._text_rows = t.text_rows
        self._num_rows = t.num_rows
        self._seed_rows = t.seed_rows
        self._plain_rows = t.plain_rows
        self._loose_gates = t.loose_gates
        self._bare_digits = t.bare_digits
        self._quick = t.quick
        self._open_quick = t.open_quick
        self._open_reach = t.open_reach
        self._loose_max_width = t.loose_max_width
        self._need_long = t.need_long
        self._any_ci = t.any_ci
        self.ws_width = t.ws_width
        self.max_width = t.max_width
        # encoded runs are decoded and scanned by a second matcher that does not decode again
        has_secrets = any(spec.kind.startswith("secret:") for spec in t.specs) or bool(t.exact)
        self._inner = Matcher(table, decode=False) if decode and has_secrets else None

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
            and len(text) - pos < QUICK_TEXT
            and text.isascii()
            and self._quick.search(text.lower(), pos) is None
        ):
            # a short ASCII text with no anchor, digit, `:` or `@`: only the long tokens can be in it
            if self._long_groups and len(text) - pos >= LONG_WORD:
                spans: list[tuple[int, int]] = []
                longb, _ = long_words(text[pos:].encode("ascii"), spans, pos)
                if longb:
                    self._long_candidates(out, raw, text, pos, longb)
                    if self._inner is not None:
                        self._encoded(out, raw, text.encode("ascii"), spans)
            return out
        view = text.encode("ascii", "replace")  # one byte per character: byte offsets are text offsets
        # a long token or value found here starts at or after `pos`, so its run lies in text[pos:]
        runs: list[tuple[int, int]] = []
        longb, longest = (
            long_words(view[pos:] if pos else view, runs, pos)
            if self._need_long and len(text) - pos >= LONG_WORD
            else (b"", 0)
        )
        if longb:
            self._long_candidates(out, raw, text, pos, longb)
            if self._inner is not None:
                self._encoded(out, raw, view, runs)
        lower = lower_aligned(text) if self._any_ci else text
        short = len(text) - pos < FOLLOW_MIN_TEXT
        follow_cache: dict[tuple[str, int], list[tuple[int, int]] | None] = {}
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
            matches = at_seeds(spec, text, pos, hay, plan, follow_cache)
            if matches:
                collect(out, raw, prio, spec, text, matches)
        for prio, spec in self._text_rows:
            if spec.anchor_back is not None:
                collect(out, raw, prio, spec, text, anchored_literal(spec, text, text, pos))
                continue
            for anchor in spec.anchors:
                if anchor in text:
                    collect(out, raw, prio, spec, text, spec.regex.finditer(text, pos))
                    break
        cls = view.translate(CLASS_TABLE) if self._num_rows or self._seed_rows else b""
        if self._num_rows and cls.find(b"0", pos) != -1:
            bare = self._bare_digits
            for start, end in number_runs(text, pos, cls):
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
                        collect(out, raw, prio, spec, text, spec.regex.finditer(text, start, end))
        seeds_of: dict[re.Pattern[str], list[int]] = {}
        for prio, spec, seed_prefix, shape in self._seed_rows:
            assert spec.anchor_re is not None
            if shape is not None:
                if shape.search(cls, pos) is None:
                    continue  # the regex engine's literal-prefix scan beats `in` here
                seeds = find_all(cls, spec.shape, pos)  # aligned: class offsets are text offsets
            else:  # rows sharing a seed regex (the two IPv6 rows) share its pass
                if seed_prefix and text.find(seed_prefix, pos) == -1:
                    continue  # e.g. no `:` at all, so no IPv6 address
                found = seeds_of.get(spec.anchor_re)
                if found is None:
                    found = seeds_of[spec.anchor_re] = [m.start() for m in spec.anchor_re.finditer(text, pos)]
                seeds = found
            if seeds:
                collect(out, raw, prio, spec, text, anchored(spec, text, pos, seeds, spec.anchor_back))
        for prio, spec in self._plain_rows:
            collect(out, raw, prio, spec, text, spec.regex.finditer(text, pos))
        if self._email and text.find("@", pos) != -1:
            prio = len(self._specs)
            for s, e in find_emails(text, pos):
                out.append(Candidate(s, e, prio, "pii:email"))
                if raw is not None:
                    raw.append((s, e))
        return out

    def _encoded(
        self,
        out: list[Candidate],
        raw: list[tuple[int, int]] | None,
        view: bytes,
        runs: list[tuple[int, int]],
    ) -> None:
        """Encoded secrets and Discord tokens in the long token runs (`encoded.py`)."""
        inner = self._inner
        assert inner is not None

        def scan_inner(decoded: str) -> list[tuple[int, str]]:
            return [
                (c.priority, c.kind)
                for c in inner.candidates(decoded, 0, None)
                if c.kind.startswith("secret:")
            ]

        for s, e, prio, kind in encoded_candidates(view, runs, scan_inner, raw):
            out.append(Candidate(s, e, prio, kind))

    def _long_candidates(
        self, out: list[Candidate], raw: list[tuple[int, int]] | None, text: str, pos: int, longb: bytes
    ) -> None:
        """The long-token rows whose anchors occur in the text's long words (`long_words`)."""
        for gate, rows in self._long_groups:
            if gate not in longb:
                continue  # one check for a family of anchors (`sk-…`, `gh?_`, `A…`)
            for prio, spec, needles in rows:
                for needle in needles:
                    if needle in longb:
                        collect(out, raw, prio, spec, text, anchored_literal(spec, text, text, pos))
                        break

    def open_start(self, text: str, pos: int) -> int:
        """Earliest index >= `pos` where a match may start that later text could still change.

        Whitespace-free patterns can only be open in the last whitespace-free run (and only within
        their width of the end); the others only where their `start` regex matches within their
        width of the end and their `extent` reaches the end; exact values where a suffix of the
        text is a prefix of the value. A row whose start cannot occur in the part of the text
        before the current answer (no anchor, no digit, no `+`…, see `start_gate`) is skipped
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
                            cls = text.encode("ascii", "replace").translate(CLASS_TABLE)
                        hay: str | bytes = cls
                    elif hay_name == "lower":
                        if not lower:
                            lower = lower_aligned(text)
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


def lower_aligned(text: str) -> str:
    """`text.lower()` with one character per character, so offsets match the text: `İ` (the only
    character whose lower case is two) becomes `i`, which case-insensitive matching equates with it.

    Case-insensitive rows are looked up in this form whatever the text holds, so a stream buffer and
    the whole reply always agree on where an anchor is.
    """
    low = text.lower()
    return low if len(low) == len(text) else text.replace("\u0130", "i").lower()


def long_words(b: bytes, spans: list[tuple[int, int]] | None = None, base: int = 0) -> tuple[bytes, int]:
    """The runs of at least `LONG_WORD` token characters (`TOKEN_CHARS`) of the aligned text,
    space-joined, and the length of the longest; their spans (plus `base`) go to `spans`.

    One `translate` (C speed) stands in for a word split: prose rarely has such runs, and code's
    long words are mostly broken up by brackets, quotes and commas, so the long-token detectors
    usually cost little.
    """
    t = b.translate(WORD_TABLE)
    i = t.find(LONG_NEEDLE)
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
        if spans is not None:
            spans.append((base + i, base + j))
        if j - i > longest:
            longest = j - i
        i = find(LONG_NEEDLE, j)
    return b" ".join(parts), longest


def find_all(hay: bytes, needle: bytes, pos: int) -> list[int]:
    out = []
    i = hay.find(needle, pos)
    while i != -1:
        out.append(i)
        i = hay.find(needle, i + 1)
    return out


def aligned_bytes(text: str) -> bytes:
    """The text as one byte per character (non-ASCII as `?`), so byte offsets are text offsets."""
    return text.encode("ascii", "replace")


def number_runs(text: str, pos: int, cls: bytes) -> list[tuple[int, int]]:
    """`NUMBER_RUN` spans from `pos`, widened by a leading `(`/`+` and two lookahead characters.

    The search runs on `cls`, the class map of the aligned bytes (`CLASS_TABLE`: digits `0`, other
    number characters `1`), where a run starts with a literal, so the regex engine
    skips between digits in C instead of testing a character class at every position.
    """
    runs: list[tuple[int, int]] = []
    for m in NUM_CLASS_RUN.finditer(cls, pos):
        s = m.start()
        if s > pos and text[s - 1] in "(+":
            s -= 1
        runs.append((s, m.end() + 2))
    return runs


def collect(
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


def anchored_literal(spec: PatternSpec, hay: str, text: str, pos: int) -> list[re.Match[str]]:
    """Anchor occurrences of `spec.anchors` in `hay` (text or its lower-case form), then matches."""
    back = spec.anchor_back
    if back == 0 and not spec.back_chars:
        return at_seeds(spec, text, pos, hay, anchor_plan(spec))
    seeds: list[int] = []
    backs: list[int] = []
    for k, anchor in enumerate(spec.anchors):
        i = hay.find(anchor, pos)
        b = back[k] if isinstance(back, tuple) else (back or 0)
        while i != -1:
            seeds.append(i)
            backs.append(b)
            i = hay.find(anchor, i + 1)
    return anchored(spec, text, pos, seeds, tuple(backs)) if seeds else []


def at_seeds(
    spec: PatternSpec,
    text: str,
    pos: int,
    hay: str,
    plan: Plan,
    follow_cache: dict[tuple[str, int], list[tuple[int, int]] | None] | None = None,
) -> list[re.Match[str]]:
    """`anchored` for rows whose matches start exactly at an anchor (the common case), minus the
    per-seed bookkeeping: sorted anchor positions, one `match` each, leftmost non-overlapping.

    With `follow_chars`, when the text has few operator characters (prose), anchors are searched
    only within `follow_window` before one (`_follow_ranges`): the others could not match anyway.
    An anchor with `anchor_after` requirements is kept only where `hay` ends with one of them (or
    where the characters before it are not all ASCII, so case folding might differ).
    """
    seeds: list[int] = []
    find = hay.find
    ranges = None
    if spec.follow_chars and len(text) - pos >= FOLLOW_MIN_TEXT:
        key = (spec.follow_chars, spec.follow_window)
        if follow_cache is not None and key in follow_cache:
            ranges = follow_cache[key]  # rows with the same operators share one pass (password, token)
        else:
            ranges = _follow_ranges(spec.follow_chars, spec.follow_window, text, pos)
            if follow_cache is not None:
                follow_cache[key] = ranges
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


FOLLOW_MIN_TEXT = 1024
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


def anchored(
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
