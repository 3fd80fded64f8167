"""System-prompt leak detectors: verbatim runs of the system message, and an opt-in canary token.

`SystemPromptLeak` needs no change to any prompt: it flags a reply that repeats at least `min_words`
consecutive words of the request's system message (word shingles, case and punctuation ignored).
`CanaryScanner` is stronger but opt-in: `insert_canary` puts a per-request random token in the
system message, and the scanner finds it in the reply as is, spaced or dotted out, reversed, in hex or
in base64. Both follow the `Scanner` protocol of redact.py, so they combine with the shared
`OutputScanner` (`CombinedScanner`) and run in the stream redactor. They are built per request.
"""

from __future__ import annotations

import base64
import re
import secrets

from sidecar.guards.redact import Candidate
from sidecar.model import Finding

LEAK_KIND = "leak:system_prompt"
CANARY_KIND = "leak:canary"
DEFAULT_MIN_WORDS = 8

_WORD = re.compile(r"\w+")


def make_canary() -> str:
    """A fresh random token (80 bits) that no reply contains by chance."""
    return "cnry" + secrets.token_hex(10)


def insert_canary(system_text: str, canary: str) -> str:
    """The system message with the canary in a leading comment line the model has no reason to quote."""
    return f"<!-- {canary} -->\n{system_text}"


class SystemPromptLeak:
    """Finds runs of >= `min_words` words of the system message repeated verbatim in a reply."""

    def __init__(self, system_text: str, *, min_words: int = DEFAULT_MIN_WORDS) -> None:
        if min_words < 2:
            raise ValueError("min_words must be at least 2")
        self.k = min_words
        words = [w.lower() for w in _WORD.findall(system_text)]
        self._shingles = frozenset(tuple(words[i : i + min_words]) for i in range(len(words) - min_words + 1))

    def _words(self, text: str, pos: int) -> list[re.Match[str]]:
        words = list(_WORD.finditer(text, pos))
        if words and words[0].start() == pos and pos > 0 and _WORD.match(text[pos - 1]):
            words.pop(0)  # the tail of a word that started before pos
        return words

    def _runs(self, words: list[re.Match[str]], upto: int) -> list[tuple[int, int]]:
        """(first, last) word indexes of merged matched windows starting before `upto`."""
        k = self.k
        low = [w.group().lower() for w in words]
        runs: list[tuple[int, int]] = []
        for i in range(min(upto, len(low) - k + 1)):
            if tuple(low[i : i + k]) in self._shingles:
                if runs and i <= runs[-1][1] + 1:
                    runs[-1] = (runs[-1][0], i + k - 1)
                else:
                    runs.append((i, i + k - 1))
        return runs

    def scan(self, text: str) -> list[Finding]:
        """Spans of the reply that repeat the system message, in order."""
        return [Finding(c.start, c.end, c.kind) for c in self.candidates(text, 0, None)]

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]:
        """Each verbatim run as one candidate (its raw span is the same)."""
        if not self._shingles:
            return []
        words = self._words(text, pos)
        out = []
        for a, b in self._runs(words, len(words)):
            s, e = words[a].start(), words[b].end()
            out.append(Candidate(s, e, 0, LEAK_KIND))
            if raw is not None:
                raw.append((s, e))
        return out

    def open_start(self, text: str, pos: int) -> int:
        """Where a window that is not complete yet, or a run that may still grow, starts."""
        if not self._shingles:
            return len(text)
        words = self._words(text, pos)
        complete = len(words) - (1 if words and words[-1].end() == len(text) else 0)
        first_open = max(0, complete - self.k + 1)
        runs = self._runs(words, first_open)
        if runs and runs[-1][1] >= complete - 1:
            first_open = min(first_open, runs[-1][0])
        return words[first_open].start() if first_open < len(words) else len(text)


_SEP = r"[\s\-_.,|/*'\"`]{0,3}"


class CanaryScanner:
    """Finds one canary in a reply: verbatim, spaced/dotted, reversed, hex or base64."""

    def __init__(self, canary: str) -> None:
        if len(canary) < 8:
            raise ValueError("canary too short")
        raw = canary.encode()
        forms = {canary, canary[::-1], raw.hex(), raw.hex().upper()}
        for pad in range(3):  # the canary inside a longer base64 text, at each alignment
            enc = base64.b64encode(b"\0" * pad + raw).decode().rstrip("=")
            skip = (pad * 4 + 2) // 3 if pad else 0
            stable = enc[skip : len(enc) - (1 if (pad + len(raw)) % 3 else 0)]
            forms.add(stable)
            forms.add(stable.replace("+", "-").replace("/", "_"))
        self._forms = tuple(sorted(forms, key=len, reverse=True))
        chars = [re.escape(c) for c in canary]
        self._spaced = re.compile(_SEP.join(chars), re.IGNORECASE)
        prefix = ""
        for c in reversed(chars[1:]):
            prefix = f"(?:{_SEP}{c}{prefix})?"
        self._prefix = re.compile(chars[0] + prefix, re.IGNORECASE)
        self._first = canary[0].lower()
        self.width = len(canary) * 4

    def scan(self, text: str) -> list[Finding]:
        """Spans where the canary appears, in order."""
        from sidecar.guards.redact import resolve

        return resolve(self.candidates(text, 0, None))

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]:
        """Exact encoded forms, then the spaced/obfuscated form."""
        out: list[Candidate] = []
        for form in self._forms:
            i = text.find(form, pos)
            while i != -1:
                out.append(Candidate(i, i + len(form), 0, CANARY_KIND))
                if raw is not None:
                    raw.append((i, i + len(form)))
                i = text.find(form, i + len(form))
        for m in self._spaced.finditer(text, pos):
            out.append(Candidate(m.start(), m.end(), 1, CANARY_KIND))
            if raw is not None:
                raw.append(m.span())
        return out

    def open_start(self, text: str, pos: int) -> int:
        """Where a suffix of the text begins a form of the canary."""
        n = len(text)
        o = n
        lo = max(pos, n - self.width)
        low = text.lower()
        i = low.find(self._first, lo)
        while i != -1:
            m = self._prefix.match(text, i)
            if m is not None and m.end() + 3 >= n:
                o = i
                break
            i = low.find(self._first, i + 1)
        for form in self._forms:
            j = text.find(form[0], max(pos, n - len(form) + 1), o)
            while j != -1:
                if form.startswith(text[j:]):
                    o = j
                    break
                j = text.find(form[0], j + 1, o)
        return o
