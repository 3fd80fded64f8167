"""Incremental redaction of a streamed reply with the smallest hold-back that stays exact.

Each `feed(delta)` returns the text that is safe to send now, already redacted. A position is
safe once no match that could still change with more text can start before it (the scanner's
`open_start`), and a cut never splits a raw regex match. Because cuts fall only on such
positions and the scanner keeps a little already-sent text as left context (for lookbehinds), the
concatenation of everything emitted equals `apply_actions(whole, scanner.scan(whole), actions).text`.

The hold-back bound (see docs/output-eval.md): the trailing whitespace-free run (only if it is
shorter than the widest whitespace-free pattern, ~4 KB for JWTs), plus a tail that may still start a
number, an IBAN, a `password=` assignment or a private-key block, plus any suffix that begins an
exact value. In prose that is the last partial word and at most a few dozen characters after a
digit. `holdback` is a hard cap on the buffer: past it the oldest text is sent even if it might start
a match (a private-key block or JWT longer than the cap would then be missed), so keep it above the
widest pattern you care about.
"""

from __future__ import annotations

from collections.abc import Mapping

from sidecar.guards.redact import Scanner, apply_actions, resolve
from sidecar.model import Finding

DEFAULT_HOLDBACK = 8192
"""Hard cap on held-back characters: covers a 4096-bit RSA PEM block and JWTs up to ~4 KB."""

_CONTEXT = 16
"""Already-sent characters kept as left context for the patterns' lookbehinds (they need 2)."""


class StreamRedactor:
    """Redacts one text stream (one choice, or one tool call's arguments) as it arrives."""

    def __init__(
        self, scanner: Scanner, actions: Mapping[str, str], *, holdback: int = DEFAULT_HOLDBACK
    ) -> None:
        if holdback < 1:
            raise ValueError("holdback must be positive")
        self._scanner = scanner
        self._actions = actions
        self._holdback = holdback
        self._ctx = ""
        self._buf = ""
        self._offset = 0
        self.blocked = False
        self.findings: list[Finding] = []

    @property
    def held(self) -> int:
        """Characters received but not yet emitted."""
        return len(self._buf)

    @property
    def settled(self) -> int:
        """Characters of the original reply already judged and emitted (findings before this
        offset are final)."""
        return self._offset

    def feed(self, delta: str) -> str:
        """Take the next piece of the reply; return the redacted text that is safe to send now."""
        if self.blocked:
            return ""
        self._buf += delta
        text = self._ctx + self._buf
        pos = len(self._ctx)
        n = len(text)
        cut = self._scanner.open_start(text, pos)
        cut = max(cut, n - self._holdback)
        if cut <= pos:
            return ""
        return self._emit(text, pos, cut)

    def finish(self) -> str:
        """The end of the reply: return everything still held, redacted."""
        if self.blocked or not self._buf:
            return ""
        text = self._ctx + self._buf
        return self._emit(text, len(self._ctx), len(text))

    def _emit(self, text: str, pos: int, cut: int) -> str:
        raw: list[tuple[int, int]] = []
        cands = self._scanner.candidates(text, pos, raw)
        if not raw and not cands:  # nothing matched at all (most tokens): send the text as it is
            sent = text[pos:cut]
            self._ctx = (self._ctx + sent)[-_CONTEXT:]
            self._buf = text[cut:]
            self._offset += len(sent)
            return sent
        if cut < len(text):
            moved = True
            while moved:
                moved = False
                for s, e in raw:
                    if s < cut < e:
                        cut = s
                        moved = True
            if cut <= pos:
                return ""
        shift = self._offset - pos
        found = resolve(c for c in cands if c.end <= cut)
        absolute = [Finding(f.start + shift, f.end + shift, f.kind) for f in found]
        decision = apply_actions(text[pos:cut], absolute, self._actions, base=self._offset)
        self.findings.extend(decision.findings)
        sent = text[pos:cut]
        self._ctx = (self._ctx + sent)[-_CONTEXT:]
        self._buf = text[cut:]
        self._offset += len(sent)
        if decision.blocked:
            self.blocked = True
            self._buf = ""
        return decision.text
