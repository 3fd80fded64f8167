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
import functools
import re
import secrets

from sidecar.guards.redact import Candidate
from sidecar.model import Finding

LEAK_KIND = "leak:system_prompt"
CANARY_KIND = "leak:canary"
DEFAULT_MIN_WORDS = 8

_WORD = re.compile(r"\w+")
_WORD_CHAR = re.compile(r"\w")


def make_canary() -> str:
    """A fresh random token (80 bits) that no reply contains by chance."""
    return "cnry" + secrets.token_hex(10)


def insert_canary(system_text: str, canary: str) -> str:
    """The system message with the canary in a leading comment line the model has no reason to quote."""
    return f"<!-- {canary} -->\n{system_text}"


class SystemPromptLeak:
    """Finds runs of >= `min_words` words of the system message repeated verbatim in a reply.

    Built per request, so construction reuses a small cache of the prompt's index (the system
    message is usually the same across requests), and a scan first marks which reply words occur in
    the prompt at all: only stretches of `min_words` such words are looked up as shingles, and only a
    found run costs word positions.
    """

    def __init__(self, system_text: str, *, min_words: int = DEFAULT_MIN_WORDS) -> None:
        if min_words < 2:
            raise ValueError("min_words must be at least 2")
        self.k = min_words
        self._vocab, self._shingles = _prompt_index(system_text, min_words)
        self._ones = b"\x01" * min_words
        self._memo_text: str | None = None
        self._memo_pos = -1
        self._memo: tuple[str | None, list[str]] = (None, [])

    def _words(self, text: str, pos: int) -> list[str]:
        """The lower-case words of `text` from `pos`, without the tail of a word begun before it."""
        return self._read(text, pos)[1]

    def _read(self, text: str, pos: int) -> tuple[str | None, list[str]]:
        """`_ascii_words` and the word list, remembered for the last text: a stream asks
        `open_start` and then `candidates` of the same buffer (the same object)."""
        if text is self._memo_text and pos == self._memo_pos:
            return self._memo
        mapped = _ascii_words(text, pos)
        self._memo = (mapped, self._split(text, pos, mapped))
        self._memo_text, self._memo_pos = text, pos
        return self._memo

    @staticmethod
    def _split(text: str, pos: int, mapped: str | None) -> list[str]:
        if mapped is not None:
            words = mapped.split()
        else:
            words = _WORD.findall(text, pos)
            # `lower` never makes a space, so one call for all words keeps the list aligned.
            words = " ".join(words).lower().split(" ") if words else words
        if words and pos > 0 and _WORD_CHAR.match(text, pos - 1) and _WORD_CHAR.match(text, pos):
            words.pop(0)
        return words

    def _spans(self, text: str, pos: int) -> list[re.Match[str]]:
        """The same words as `_words`, with their positions (only needed once a run is found)."""
        spans = list(_WORD.finditer(text, pos))
        if spans and spans[0].start() == pos and pos > 0 and _WORD_CHAR.match(text, pos - 1):
            spans.pop(0)
        return spans

    def _runs(self, low: list[str], upto: int) -> list[tuple[int, int]]:
        """(first, last) word indexes of merged matched windows starting before `upto`.

        A window can only match where all its words are in the prompt's vocabulary, so only the
        stretches of at least `k` such words are tried, in order, with the same merging.
        """
        k = self.k
        shingles = self._shingles
        mask = bytes(map(self._vocab.__contains__, low))
        runs: list[tuple[int, int]] = []
        i = mask.find(self._ones)
        while i != -1 and i < upto:
            j = mask.find(0, i + k)
            if j == -1:
                j = len(mask)
            for s in range(i, min(j - k + 1, upto)):
                if " ".join(low[s : s + k]) in shingles:
                    if runs and s <= runs[-1][1] + 1:
                        runs[-1] = (runs[-1][0], s + k - 1)
                    else:
                        runs.append((s, s + k - 1))
            i = mask.find(self._ones, j)
        return runs

    def scan(self, text: str) -> list[Finding]:
        """Spans of the reply that repeat the system message, in order."""
        return [Finding(c.start, c.end, c.kind) for c in self.candidates(text, 0, None)]

    def candidates(self, text: str, pos: int, raw: list[tuple[int, int]] | None) -> list[Candidate]:
        """Each verbatim run as one candidate (its raw span is the same)."""
        if not self._shingles:
            return []
        low = self._words(text, pos)
        runs = self._runs(low, len(low))
        if not runs:
            return []
        spans = self._spans(text, pos)
        out = []
        for a, b in runs:
            s, e = spans[a].start(), spans[b].end()
            out.append(Candidate(s, e, 0, LEAK_KIND))
            if raw is not None:
                raw.append((s, e))
        return out

    def open_start(self, text: str, pos: int) -> int:
        """Where a window that is not complete yet, or a run that may still grow, starts.

        A window holding a complete word that is not in the prompt can never match, so only the
        words after the last such word can still begin one: in most replies that is the last word
        or two, not the last `min_words`.
        """
        if not self._shingles:
            return len(text)
        mapped, low = self._read(text, pos)
        complete = len(low) - (1 if low and _WORD_CHAR.match(text, len(text) - 1) else 0)
        first_open = max(0, complete - self.k + 1)
        vocab = self._vocab
        for j in range(complete - 1, first_open - 1, -1):
            if low[j] not in vocab:
                first_open = j + 1
                break
        runs = self._runs(low, first_open)
        if runs and runs[-1][1] + 1 >= first_open:
            first_open = runs[-1][0]  # a window from `first_open` on would merge into this run
        if first_open >= len(low):
            return len(text)
        if mapped is None:
            return self._spans(text, pos)[first_open].start()
        i = len(mapped)  # step back over the last `len(low) - first_open` words
        for _ in range(len(low) - first_open):
            while mapped[i - 1] == " ":
                i -= 1
            i = mapped.rfind(" ", 0, i) + 1
        return pos + i


_ASCII_WORDS = bytes(
    b + 32 if 65 <= b <= 90 else b if 97 <= b <= 122 or 48 <= b <= 57 or b == 95 else 32 for b in range(256)
)
"""ASCII word characters (`\\w`) in lower case; everything else a space."""


def _ascii_words(text: str, pos: int) -> str | None:
    """`text[pos:]` with its `\\w` characters in lower case and the others as spaces (so `split()`
    gives the words) via one byte translate, or None when a non-ASCII character is a word
    character (then the regex must decide, as for `é` or `İ`).

    The regex engine tests a Unicode category at every character (~40 ns each); most replies are
    ASCII apart from quotes, dashes and emoji, which are not word characters.
    """
    seg = text[pos:] if pos else text
    view = seg.encode("ascii", "replace")
    if not seg.isascii():
        i = view.find(b"?")
        while i != -1:
            if seg[i].isalnum():  # `\\w` is `isalnum()` or `_` for every character
                return None
            i = view.find(b"?", i + 1)
    return view.translate(_ASCII_WORDS).decode("ascii")


_INDEX_CACHE_CHARS = 16_384
"""System messages up to this long have their index cached (most requests repeat one)."""


def _prompt_index(system_text: str, k: int) -> tuple[frozenset[str], frozenset[str]]:
    """The prompt's lower-case vocabulary and its `k`-word shingles (words joined by one space)."""
    if len(system_text) <= _INDEX_CACHE_CHARS:
        return _cached_index(system_text, k)
    return _build_index(system_text, k)


def _build_index(system_text: str, k: int) -> tuple[frozenset[str], frozenset[str]]:
    words = [w.lower() for w in _WORD.findall(system_text)]
    shingles = frozenset(" ".join(words[i : i + k]) for i in range(len(words) - k + 1))
    return frozenset(words), shingles


_cached_index = functools.lru_cache(maxsize=32)(_build_index)


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
