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
from typing import NamedTuple, Protocol

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
        self._ci = any(s.anchors_ci for s in specs)
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
        self.max_width = max(
            [self.ws_width, *(s.width for s in self._loose), *(len(v) for _, v in self._exact)]
        )

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings in `text`, sorted by position."""
        return resolve(self.candidates(text, 0, None))

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]:
        """Validated matches starting at or after `pos`; appends every raw regex span to `raw`."""
        out: list[Candidate] = []
        lower = text.lower() if self._ci else text
        for prio, (kind, value) in enumerate(self._exact):
            i = text.find(value, pos)
            while i != -1:
                out.append(Candidate(i, i + len(value), prio - len(self._exact), kind))
                if raw is not None:
                    raw.append((i, i + len(value)))
                i = text.find(value, i + len(value))
        aligned = len(lower) == len(text)
        for prio, spec in enumerate(self._specs):
            matches: Iterable[re.Match[str]]
            if spec.anchors:
                hay = lower if spec.anchors_ci else text
                for anchor in spec.anchors:
                    if anchor in hay:
                        break
                else:
                    continue
                if spec.anchor_back is not None and aligned:
                    matches = _anchored(spec, hay, text, pos)
                else:
                    matches = spec.regex.finditer(text, pos)
            else:
                matches = spec.regex.finditer(text, pos)
            groups = spec.group
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
                if spec.validate is None or spec.validate(text[s:e]):
                    out.append(Candidate(s, e, prio, spec.kind))
        if self._email:
            prio = len(self._specs)
            for s, e in find_emails(text, pos):
                out.append(Candidate(s, e, prio, "pii:email"))
                if raw is not None:
                    raw.append((s, e))
        return out

    def open_start(self, text: str, pos: int) -> int:
        """Earliest index >= `pos` where a match may start that later text could still change.

        Whitespace-free patterns can only be open in the last whitespace-free run (and only within
        their width of the end); the others only where their `start` regex matches within their
        width of the end and their `extent` reaches the end; exact values where a suffix of the
        text is a prefix of the value.
        """
        n = len(text)
        w = max(text.rfind(" ", pos), text.rfind("\n", pos), text.rfind("\t", pos), text.rfind("\r", pos))
        o = max(w + 1, n - self.ws_width, pos)
        for spec in self._loose:
            lo = max(pos, n - spec.width + 1)
            if lo >= o:
                continue
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


def _anchored(spec: PatternSpec, hay: str, text: str, pos: int) -> list[re.Match[str]]:
    """What `spec.regex.finditer(text, pos)` yields, trying only positions near anchor occurrences."""
    back = spec.anchor_back or 0
    starts: set[int] = set()
    for anchor in spec.anchors:
        i = hay.find(anchor, pos)
        while i != -1:
            starts.update(range(max(pos, i - back), i + 1))
            i = hay.find(anchor, i + 1)
    out: list[re.Match[str]] = []
    last_end = -1
    match = spec.regex.match
    for s in sorted(starts):
        if s < last_end:
            continue
        m = match(text, s)
        if m is not None:
            out.append(m)
            last_end = m.end()
    return out


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
            shift = i * 1_000_000
            out.extend(c._replace(priority=c.priority + shift) for c in s.candidates(text, pos, raw))
        return out

    def open_start(self, text: str, pos: int) -> int:
        """The earliest open start of any scanner."""
        return min((s.open_start(text, pos) for s in self._scanners), default=len(text))
