"""Strip characters that hide text from people but not from models.

Removed: C0/C1 control characters (tab, newline and carriage return are kept), zero-width and
other invisible format characters, bidi embeddings/overrides/isolates/marks, and Unicode tag
characters (U+E0000-U+E007F, "ASCII smuggling"). Everything else is left as is, so a prompt that
holds none of these comes back as the very same object (no copy on the hot path).

Known cost: zero-width joiner is removed too, so emoji ZWJ sequences (family emoji) split into
their parts, and tag-based flag emoji (England, Scotland) lose their tags. This is deliberate:
both are common carriers for smuggled instructions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

_INVISIBLE_CLASS = (
    "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # C0 except \t \n \r, DEL, C1
    "\u00ad"  # soft hyphen
    "\u034f"  # combining grapheme joiner
    "\u061c"  # arabic letter mark (bidi)
    "\u115f\u1160\u3164\uffa0"  # hangul fillers (render blank)
    "\u17b4\u17b5"  # khmer invisible vowels
    "\u180b-\u180e"  # mongolian free variation selectors and vowel separator
    "\u200b-\u200f"  # zero-width space/non-joiner/joiner, LRM, RLM
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u206f"  # bidi isolates, deprecated format characters
    "\ufeff"  # zero-width no-break space / BOM
    "\ufff9-\ufffb"  # interlinear annotation controls
    "\U0001d173-\U0001d17a"  # musical invisible formatting
    "\U000e0000-\U000e007f"  # tag characters
)

_INVISIBLE = re.compile(f"[{_INVISIBLE_CLASS}]+")


# Characters we strip that str.isprintable() still calls printable (letters and marks that
# render blank). Every other stripped character is Cc/Cf, i.e. "not printable".
_PRINTABLE_INVISIBLES = (
    "\u034f",
    "\u115f",
    "\u1160",
    "\u17b4",
    "\u17b5",
    "\u180b",
    "\u180c",
    "\u180d",
    "\u3164",
    "\uffa0",
)


def _surely_clean(s: str) -> bool:
    """Fast C-level pre-check: True means no character of the strip set can be in `s`.

    A regex scan costs ~30 ns per character; isprintable() and replace() cost ~1 ns. Texts that
    fail here (non-breaking spaces, hidden characters) take the exact regex path.
    """
    t = s
    if "\n" in t:
        t = t.replace("\n", "")
    if "\t" in t:
        t = t.replace("\t", "")
    if "\r" in t:
        t = t.replace("\r", "")
    if not t.isprintable():
        return False
    return s.isascii() or not any(c in s for c in _PRINTABLE_INVISIBLES)


def has_hidden_characters(s: str) -> bool:
    """Tell whether `s` holds any character that `sanitize_text` would strip."""
    return not _surely_clean(s) and _INVISIBLE.search(s) is not None


def sanitize_text(s: str) -> str:
    """Return `s` without hidden characters; the same object when there was nothing to strip."""
    if _surely_clean(s) or _INVISIBLE.search(s) is None:
        return s
    return _INVISIBLE.sub("", s)


def _sanitize_content(content: Any) -> tuple[Any, bool]:
    """Sanitize a message `content`: a string or a list of content parts (text parts only)."""
    if isinstance(content, str):
        clean = sanitize_text(content)
        return clean, clean is not content
    if isinstance(content, list):
        new_parts: list[Any] | None = None
        for i, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    clean = sanitize_text(text)
                    if clean is not text:
                        if new_parts is None:
                            new_parts = list(content)
                        new_part = dict(part)
                        new_part["text"] = clean
                        new_parts[i] = new_part
        if new_parts is not None:
            return new_parts, True
    return content, False


def sanitize_messages(
    messages: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], bool]:
    """Sanitize the text of every message; return (messages, changed).

    Only string content and `text` content parts are touched; images, audio, tool-call
    arguments and every other field are passed through. Input dicts are never mutated: a
    changed message is a shallow copy. When nothing changes, the original dicts are returned.
    """
    out: list[dict[str, Any]] = []
    changed = False
    for msg in messages:
        content, did = _sanitize_content(msg.get("content"))
        if did:
            new_msg = dict(msg)
            new_msg["content"] = content
            out.append(new_msg)
            changed = True
        else:
            out.append(msg)
    return out, changed
