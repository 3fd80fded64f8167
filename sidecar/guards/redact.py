"""Output scanning and the actions taken on what it finds (redact, block, flag, off).

`OutputScanner` runs the secret and PII tables plus exact values (the provider key, the admin token)
over a text and returns non-overlapping, sorted `Finding`s. `apply_actions` turns findings into an
`OutputDecision` under a per-kind action map. Both are pure and direction-agnostic: the same scanner
redacts PII in user messages on the input side.

The detector tables are compiled into named row groups by `patterns.py` and run by `matcher.py`;
this module is the public face. The scanner also answers the two questions the stream redactor
(`stream.py`) asks of any scanner (`Scanner` protocol): which matches start at or after a
position, including the raw spans of rejected regex matches (a stream cut must never split one),
and the earliest position at which a match could still be open, i.e. not yet decidable from the
text seen so far.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from sidecar.guards.matcher import Candidate, Matcher
from sidecar.guards.normalize import Folded, fold_for_detection, trailing_spaced_start
from sidecar.guards.patterns import compile_rows
from sidecar.guards.pii import EMAIL_WIDTH, PII_SPECS
from sidecar.guards.secrets import SECRET_SPECS, PatternSpec, spec_from_regex
from sidecar.model import Finding

__all__ = [
    "ACTIONS",
    "DEFAULT_ACTIONS",
    "Candidate",
    "CombinedScanner",
    "OutputDecision",
    "OutputScanner",
    "Scanner",
    "apply_actions",
    "resolve",
    "resolve_action",
]

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
        exact: list[tuple[str, str]] = []
        if provider_key:
            exact.append(("secret:provider_key", provider_key))
        if admin_token:
            exact.append(("secret:admin_token", admin_token))
        exact.extend(extra_exact)
        table = compile_rows(
            specs, [(k, v) for k, v in exact if len(v) >= MIN_EXACT_LEN], email=pii, email_width=EMAIL_WIDTH
        )
        self._matcher = Matcher(table)
        self._last_fold: tuple[str | None, Folded | None] = (None, None)
        self.ws_width = table.ws_width
        self.max_width = table.max_width

    def scan(self, text: str) -> list[Finding]:
        """Non-overlapping findings in `text`, sorted by position."""
        return resolve(self.candidates(text, 0, None))

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]:
        """Validated matches starting at or after `pos`; appends every raw regex span to `raw`.

        When the text holds invisible characters, fullwidth letters or a letter-by-letter spaced
        run, the detectors read the folded copy (`normalize.fold_for_detection`) and every span is
        mapped back, so a redaction covers the original characters, invisible ones included.
        """
        folded = self._fold(text)
        if folded is None:
            return self._matcher.candidates(text, pos, raw)
        fraw: list[tuple[int, int]] | None = [] if raw is not None else None
        found = self._matcher.candidates(folded.text, folded.position(pos), fraw)
        out = [Candidate(*folded.span(c.start, c.end), c.priority, c.kind) for c in found]
        if raw is not None and fraw is not None:
            raw.extend(folded.span(s, e) for s, e in fraw)
            raw.extend(folded.spaced)  # a stream cut never splits a joined run
        return out

    def _fold(self, text: str) -> Folded | None:
        """`fold_for_detection`, remembered for the last text: a stream asks `open_start` and then
        `candidates` of the same buffer (one tuple, read and replaced whole, so sharing is safe)."""
        last_text, last = self._last_fold
        if last_text is text:
            return last
        folded = fold_for_detection(text)
        self._last_fold = (text, folded)
        return folded

    def open_start(self, text: str, pos: int) -> int:
        """Earliest index >= `pos` where a match may start that later text could still change
        (read on the folded copy, like `candidates`), or where a spaced run that could still grow
        to `SPACED_MIN` characters begins."""
        folded = self._fold(text)
        if folded is None:
            o = self._matcher.open_start(text, pos)
        else:
            o = folded.original(self._matcher.open_start(folded.text, folded.position(pos)))
        return min(o, trailing_spaced_start(text, pos))


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
