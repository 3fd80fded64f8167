"""Detection views: normalized copies of a text that the injection detector scans.

The request text itself is never changed here. Each view undoes one way of hiding an
instruction from a keyword matcher: compatibility forms (NFKC), case (casefold), look-alike
letters from other scripts, leetspeak, letters split by spaces or dots, and payloads encoded as
base64, hex, URL-encoding, HTML character references or ROT13. The base view is always built;
the others only when a cheap pre-check (one precompiled regex) finds something to undo, so
plain text costs one printable check, one lower(), one split and a few set operations. The
pre-checks work on word tokens: a view is built when a token, once de-obfuscated, is one of
the attack words in `GATE_WORDS`.

Every regex here is linear: bounded repetitions over disjoint character classes only.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import itertools
import re
import string
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from urllib.parse import unquote

from sidecar.guards.sanitize import sanitize_text

MAX_DECODED_SEGMENTS = 16  # decoded payloads per text: bounds the work an input can ask for
MAX_SPACED_RUNS = 64  # spaced-letter runs rewritten in place before the whole text is
_RUN_CONTEXT = 120  # characters of context kept on each side of a spaced-letter run

# Look-alike letters (lowercase, after casefold) -> Latin, from Cyrillic, Greek, IPA, small
# capitals and Armenian: only letters that render like a Latin letter in common fonts.
# fmt: off
_CONFUSABLES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "и": "u", "і": "i", "ї": "i", "й": "u",
    "ј": "j", "к": "k", "м": "m", "н": "h", "о": "o", "п": "n", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ь": "b",
    "ы": "bl", "г": "r", "ԍ": "g", "ѵ": "v", "ү": "y", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "ζ": "z", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "σ": "o", "ς": "c", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "μ": "u",
    "ϲ": "c", "ϳ": "j", "ɩ": "i",
    # Latin extensions and IPA that NFKC leaves alone
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɐ": "a", "ɒ": "a", "ɛ": "e", "ɪ": "i", "ʟ": "l", "ɴ": "n",
    "ʀ": "r", "ʏ": "y", "ᴀ": "a", "ᴄ": "c", "ᴅ": "d", "ᴇ": "e", "ᴊ": "j", "ᴋ": "k", "ᴍ": "m",
    "ᴏ": "o", "ᴘ": "p", "ᴛ": "t", "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ꜱ": "s",
    "ƅ": "b", "ɗ": "d", "ɦ": "h", "ɭ": "l", "ɱ": "m", "ɲ": "n", "ɾ": "r", "ʂ": "s", "ʋ": "v",
    "ø": "o", "đ": "d", "ħ": "h", "ł": "l", "ŧ": "t", "ß": "ss",
    # Armenian and others
    "օ": "o", "ս": "u", "ց": "g", "ո": "n", "հ": "h", "ք": "p",
}
_CONFUSABLE_TABLE = str.maketrans(_CONFUSABLES)
_COMBINING_LATIN = re.compile("[\u0300-\u036f]+")


_LEET_TABLE = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s",
     "€": "e", "|": "l", "9": "g"}
)
# fmt: on
_ROT13_TABLE = str.maketrans(
    string.ascii_lowercase, string.ascii_lowercase[13:] + string.ascii_lowercase[:13]
)
# Words that injections are made of (all inflections we gate on). De-obfuscating a token is
# only worth a new view when it yields one of these.
GATE_WORDS = frozenset(
    """
    ignore ignored ignoring ignores ignorez ignorer ignora ignorar ignorare ignoriere ignorieren
    ignoriert ignorate ignorem ignoren disregard disregarding forget forgetting override bypass
    instructions instruction instruct directions prompt prompts system previous prior above
    earlier preceding jailbreak jailbroken pretend developer reveal decode execute follow rules
    disobey unrestricted unfiltered uncensored filters guidelines policies policy commands
    admin dan mode secret password respond answer output print say repeat new task tasks now
    oublie oubliez vergiss anweisungen regeln olvida instrucciones istruzioni dimentica
    esqueça instruções précédentes vorherigen anteriores precedenti
    """.split()
)
_PUNCT_BYTES = bytes.maketrans(string.punctuation.encode("ascii"), b" " * len(string.punctuation))
_WORD = re.compile(r"\w+")
_RARE_SINGLES = frozenset("bcefghjklnopqruvwxyz")

# Runs of single letters split by one separator kind: "i g n o r e", "i.g.n.o.r.e", "i-g-n".
_SPACED_RUN = re.compile(r"(?<!\w)(?:[^\W_][ .\-_*·•/|,+~]{1,3}){3,120}[^\W_](?!\w)")
_SPACED_GAP = re.compile(r"[ .\-_*·•/|,+~]{1,3}")

_KEEP_IN_CANDIDATES = "+/=_-\\"
_CANDIDATE_BYTES = bytes.maketrans(
    "".join(c for c in string.punctuation if c not in _KEEP_IN_CANDIDATES).encode("ascii"),
    b" " * (len(string.punctuation) - len(_KEEP_IN_CANDIDATES)),
)
_B64_SPLIT = re.compile(r"\\")
_B64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_HEX_TOKEN = re.compile(r"(?:x?[0-9A-Fa-f]{2}){8,}")
_HEX_JUNK = re.compile(r"[^0-9A-Fa-f]+")
_URL_ESC = re.compile(r"%[0-9A-Fa-f]{2}")
_HTML_REF = re.compile(r"&#[xX]?[0-9A-Fa-f]{1,6};|&[a-zA-Z]{2,8};")
_NON_TEXT = re.compile(r"[^\w\s.,;:!?'\"()\[\]{}<>@#$%&*+=/\\|~^`-]")


@dataclass(frozen=True, slots=True)
class View:
    """One normalized copy of the text, its word tokens and the set of distinct tokens."""

    kind: str
    text: str
    tokens: list[str]
    words: frozenset[str]


def tokenize(view: str) -> list[str]:
    r"""Split a normalized view into word tokens (the classifier's and the gates' unit).

    ASCII text: punctuation to spaces with bytes.translate, then split (C speed). Other text:
    a `\w+` regex scan. Training uses this same function, so features always line up.
    """
    if view.isascii():
        return view.encode("ascii").translate(_PUNCT_BYTES).decode("ascii").split()
    return _WORD.findall(view)


def _make_view(kind: str, text: str) -> View:
    tokens = tokenize(text)
    return View(kind, text, tokens, frozenset(tokens))


def fold(s: str) -> str:
    """NFKC then casefold; skips NFKC when the text is already in that form (the usual case)."""
    if s.isascii():
        return s.lower()
    if not unicodedata.is_normalized("NFKC", s):
        s = unicodedata.normalize("NFKC", s)
    return s.casefold()


def _fold_confusables(s: str) -> str:
    """Map look-alike letters of other scripts to Latin and drop Latin diacritics."""
    t = s.translate(_CONFUSABLE_TABLE)
    d = unicodedata.normalize("NFD", t)
    if _COMBINING_LATIN.search(d) is not None:
        t = unicodedata.normalize("NFC", _COMBINING_LATIN.sub("", d))
    return t


def _split_words(run: str, inner: str) -> list[str]:
    out: list[str] = []
    start = 0
    for g in _SPACED_GAP.finditer(run):
        if g.group(0) != inner:
            out.append(run[start : g.start()])
            start = g.end()
    out.append(run[start:])
    return out


def _unspace_run(m: re.Match[str]) -> str:
    """Join a run of split letters; the most common gap is inside words, any other gap between."""
    run = m.group(0)
    gaps = _SPACED_GAP.findall(run)
    inner = max(set(gaps), key=gaps.count)
    return " ".join(part.replace(inner, "") for part in _split_words(run, inner))


def _unspaced(text: str) -> str:
    """The spaced-letter runs of `text` joined up, each with some context on either side.

    Only the neighbourhoods of the runs are kept, so a long document with a few split words
    does not cost a second full-length view. Past MAX_SPACED_RUNS runs, the whole text is
    rewritten instead (an attacker cannot hide a run behind decoys).
    """
    pieces: list[str] = []
    cur: list[str] = []
    last = 0
    for n, m in enumerate(_SPACED_RUN.finditer(text)):
        if n >= MAX_SPACED_RUNS:
            return _SPACED_RUN.sub(_unspace_run, text)
        start, end = m.span()
        if cur and start - last <= 2 * _RUN_CONTEXT:
            cur.append(text[last:start])  # close runs share one piece, gap kept verbatim
        else:
            if cur:
                cur.append(text[last : last + _RUN_CONTEXT])
                pieces.append("".join(cur))
            cur = [text[max(0, start - _RUN_CONTEXT) : start]]
        cur.append(_unspace_run(m))
        last = end
    if cur:
        cur.append(text[last : last + _RUN_CONTEXT])
        pieces.append("".join(cur))
    return "\n".join(pieces)


def _plausible_text(decoded: str) -> bool:
    """Decoded bytes that read like text: few odd symbols, some letters."""
    if len(decoded) < 6 or not any(c.isalpha() for c in decoded[:64]):
        return False
    return len(_NON_TEXT.findall(decoded)) <= len(decoded) // 20


def _decode_b64(seg: str) -> str | None:
    seg = seg.rstrip("=").replace("-", "+").replace("_", "/")
    seg += "=" * (-len(seg) % 4)
    try:
        text = base64.b64decode(seg, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return text if _plausible_text(text) else None


def _decode_hex(seg: str) -> str | None:
    digits = _HEX_JUNK.sub("", seg.replace("x", ""))
    try:
        text = bytes.fromhex(digits).decode("utf-8")
    except ValueError:
        return None
    return text if _plausible_text(text) else None


def _decoded_segments(s: str, tokens: list[str]) -> list[tuple[str, str]]:
    """Decode base64/hex/URL/HTML-escaped segments of the case-preserved text `s`.

    Gate: a word token of 20+ characters (rare in prose). Candidates are tokens of 16+
    characters (split on punctuation other than the base64 alphabet), so no regex scans plain
    prose; a text without long tokens costs one max().
    """
    out: list[tuple[str, str]] = []
    if max(map(len, tokens), default=0) >= 20 or "\\x" in s:
        raw = s.encode("utf-8", "surrogatepass").translate(_CANDIDATE_BYTES)
        for tok in raw.decode("utf-8", "surrogatepass").split():
            if len(tok) < 16:
                continue
            if len(out) >= MAX_DECODED_SEGMENTS:
                return out
            segs = [tok.replace("\\x", "")] if "\\x" in tok else _B64_SPLIT.split(tok)
            for seg in segs:
                if len(seg) < 16:
                    continue
                d: str | None = None
                if _HEX_TOKEN.fullmatch(seg) is not None:
                    d = _decode_hex(seg)
                    kind = "hex"
                elif _B64_TOKEN.fullmatch(seg) is not None and not (
                    seg.isalpha() and (seg.islower() or seg.isupper())
                ):
                    d = _decode_b64(seg[:8192])
                    kind = "base64"
                if d is not None:
                    out.append((kind, d))
    if "%" in s and s.count("%") >= 3:
        for tok in s.split():  # URL-encoded payloads have no raw spaces: decode per token
            if len(out) >= MAX_DECODED_SEGMENTS:
                break
            if tok.count("%") >= 3 and len(_URL_ESC.findall(tok)) >= 3:
                out.append(("url", unquote(tok)))
    if "&" in s and ";" in s and _HTML_REF.search(s) is not None:
        out.append(("html", html.unescape(s)))
    return out


_TAG_RUN = re.compile("[\U000e0020-\U000e007e]{4,}")


def _tag_payloads(text: str) -> list[str]:
    """ASCII hidden in Unicode tag characters (invisible when rendered, read by models)."""
    return ["".join(chr(ord(c) - 0xE0000) for c in m.group(0)) for m in _TAG_RUN.finditer(text)]


def build_views(text: str) -> list[View]:
    """Return the views of `text` to scan; the first is always the base view.

    Kinds: base (sanitized, NFKC, casefolded), confusables, leet, unspaced, rot13, and the
    decoded kinds base64, hex, url, html, unicode_tags (a payload found encoded in the text).
    """
    s = sanitize_text(text)
    tags = _tag_payloads(text) if s is not text else []
    if not s.isascii() and not unicodedata.is_normalized("NFKC", s):
        s = unicodedata.normalize("NFKC", s)
    base = _make_view("base", s.lower() if s.isascii() else s.casefold())
    views = [base]
    work = base
    uniq = base.words
    if not base.text.isascii():
        odd = [t for t in uniq if not t.isascii()]
        if any(_fold_confusables(t) in GATE_WORDS for t in odd):
            work = _make_view("confusables", _fold_confusables(base.text))
            views.append(work)
            uniq = work.words
    mixed = [t for t in uniq if not t.isalpha() and not t.isdigit()]
    if any(t.translate(_LEET_TABLE) in GATE_WORDS for t in mixed) or "@" in work.text:
        leet = work.text.translate(_LEET_TABLE)
        if leet != work.text:
            views.append(_make_view("leet", leet))
    if len(_RARE_SINGLES.intersection(uniq)) >= 4 and _SPACED_RUN.search(work.text) is not None:
        views.append(_make_view("unspaced", _unspaced(work.text)))
    if not uniq.isdisjoint(_GATE_ROT13):
        views.append(_make_view("rot13", codecs.encode(work.text, "rot13")))
    for kind, decoded in _decoded_segments(s, base.tokens):
        views.append(_make_view(kind, fold(sanitize_text(decoded))))
    views.extend(_make_view("unicode_tags", fold(p)) for p in tags)
    return views


_GATE_ROT13 = frozenset(w.translate(_ROT13_TABLE) for w in GATE_WORDS if w.isascii() and len(w) >= 5)


def tagged_views(text: str) -> list[tuple[str, str]]:
    """Return (kind, view text) pairs, base first."""
    return [(v.kind, v.text) for v in build_views(text)]


def detection_views(text: str) -> list[str]:
    """Return the normalized copies of `text` to scan; the first is the base view."""
    return [v.text for v in build_views(text)]


# --- output side: a folded copy for detection, mapped back to the original spans ---------------

SPACED_MIN = 16
"""Single characters in a row, one space apart, that count as a letter-by-letter spaced string:
shorter runs are ordinary text (`x = y + z`), longer ones are folded for the secret detectors."""
SPACED_MAX = 128
"""Longer spaced runs are left alone (a spaced key is shorter): this bounds what a stream holds
back and re-reads for them, and the walk back to a run's start."""
_SPACED_GATE = b" " * (SPACED_MIN - 1)
_SPACED_FROM = re.compile(r"\S(?: \S(?!\S))*+")
_FOLD_TRIGGER = re.compile(
    "[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff\uff10-\uff19\uff21-\uff3a\uff41-\uff5a]"
)
"""What makes a text worth folding: an invisible character, or a fullwidth letter or digit (CJK
text uses fullwidth punctuation all the time, fullwidth Latin letters almost never)."""
_DROP = re.compile("[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]")
"""Invisible characters, dropped from the folded copy."""
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
"""The fullwidth forms of ASCII (and the ideographic space), folded one for one."""


@dataclass(frozen=True, slots=True)
class Folded:
    """A copy of a text with invisible characters dropped, fullwidth forms folded to ASCII and
    letter-by-letter spaced runs joined. Replacements are one character for one, so only the
    dropped characters move positions: `shift[j]` is the folded position at which the j-th dropped
    character was (so it sat at `shift[j] + j` in the original), and a position maps either way
    with one bisection. `spaced` holds the original spans of the joined runs."""

    text: str
    shift: list[int]
    spaced: list[tuple[int, int]]

    def original(self, i: int) -> int:
        """Where folded character `i` came from (`len(text)` maps to the original length)."""
        return i + bisect_right(self.shift, i)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original span of folded `[start, end)`: from its first to its last character."""
        first = self.original(start)
        return (first, self.original(end - 1) + 1) if end > start else (first, first)

    def position(self, original: int) -> int:
        """The first folded position that comes from `original` or later."""
        shift = self.shift
        dropped_before = bisect_left(range(len(shift)), original, key=lambda j: shift[j] + j)
        return original - dropped_before


def spaced_runs(text: str, view: bytes | None = None) -> list[tuple[int, int]]:
    """Spans of runs of at least `SPACED_MIN` single characters one space apart.

    Gate: in such a run every second character is a space, so one of the two interleaved halves of
    the text has `SPACED_MIN - 1` spaces in a row (a C-level slice and `find`, ~1.4 µs/KB); only
    then are the runs located, from the hit.
    """
    b = view if view is not None else text.encode("ascii", "replace")
    out: list[tuple[int, int]] = []
    for phase in (0, 1):
        half = b[phase::2]
        k = half.find(_SPACED_GATE)
        while k != -1:
            q = 2 * k + phase  # a space inside a candidate run
            start = q - 1
            floor = q - 2 * SPACED_MAX - 2  # a run reaching past this is too long anyway
            while (
                start >= max(2, floor + 1)
                and b[start - 1] == 32
                and b[start - 2] != 32
                and not chr(b[start - 2]).isspace()
            ):
                start -= 2
            if start > 0 and not chr(b[start - 1]).isspace():
                start += 2  # the run's first character is glued to a word: the run starts one later
            m = _SPACED_FROM.match(text, start) if 0 <= start < len(text) else None
            end = m.end() if m is not None else q + 1
            singles = (end - start + 1) // 2
            if (
                m is not None
                and SPACED_MIN <= singles <= SPACED_MAX
                and start > floor
                and (start == 0 or text[start - 1].isspace())
            ):
                out.append((start, end))
            k = half.find(_SPACED_GATE, max(k + 1, (end - phase) // 2 + 1))
    out.sort()
    merged: list[tuple[int, int]] = []
    for s, e in out:
        if not merged or s >= merged[-1][1]:
            merged.append((s, e))
    return merged


def trailing_spaced_start(text: str, pos: int) -> int:
    """Where a spaced run at the end of `text` (single characters one space apart: two or more, or
    one followed by a space) begins, or len(text): more text could extend it to `SPACED_MIN`."""
    n = len(text)
    j = n - 1 if n > pos and text[-1] == " " else n
    start = n
    singles = 0
    while j - 1 >= pos and not text[j - 1].isspace() and (j - 1 == 0 or text[j - 2].isspace()):
        singles += 1
        if singles > SPACED_MAX:
            return n  # too long to be folded, so nothing to wait for
        start = j - 1
        if j - 2 >= pos and text[j - 2] == " ":
            j -= 2
        else:
            break
    return start if singles >= 2 or (singles == 1 and j < n) else n


def fold_for_detection(text: str, view: bytes | None = None) -> Folded | None:
    """The folded copy of `text`, or None when nothing in it folds (the common case: one regex
    search on non-ASCII text and the spaced-run gate). The work is C-level: one regex pass for the
    dropped characters, one `sub`, one `translate`."""
    special = not text.isascii() and _FOLD_TRIGGER.search(text) is not None
    spaced = spaced_runs(text, view) if len(text) >= 2 * SPACED_MIN - 1 and " " in text else []
    if not special and not spaced:
        return None
    if special and not spaced:
        # split at the invisible characters (C level): the running length of the pieces is where
        # each dropped character sat in the folded text
        pieces = _DROP.split(text)
        shift = list(itertools.accumulate(map(len, pieces)))[:-1]
        folded = "".join(pieces) if shift else text
        return Folded(folded.translate(_FULLWIDTH), shift, [])
    dropped = [m.start() for m in _DROP.finditer(text)] if special else []
    for s, e in spaced:
        dropped.extend(range(s + 1, e, 2))  # the spaces between the letters
    dropped.sort()
    keep = bytearray(b"\x01") * len(text)
    for k in dropped:
        keep[k] = 0
    folded = "".join(itertools.compress(text, keep))
    if special:
        folded = folded.translate(_FULLWIDTH)
    return Folded(folded, [k - j for j, k in enumerate(dropped)], spaced)
