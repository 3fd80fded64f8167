"""Secrets inside long token runs that no literal anchor finds: base64 and hex encodings of a
secret, and Discord bot tokens.

The matcher calls this only for the runs of 20+ token characters it has already found for the
long-token rows (a text without one costs nothing here). Inside each run, a base64/base64url or
hex sub-run of 24 to `ENCODED_MAX` characters is decoded; when the result is printable text in
which the scanner finds a secret, the whole encoded run is reported under the secret's kind, so
the redaction covers the run as it appears. Binary results (hashes, UUIDs, keys, images) stop at the
printable check, which is one `bytes.translate`.

A stream cannot see a run that is still growing: runs are whitespace-free, so the stream holds
them back like every other whitespace-free match (`ws_width`), and decoding depends only on the
run itself, so a stream and the whole text find the same runs.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from sidecar.guards.secrets import shannon_entropy

ENCODED_MIN = 24
"""Shortest encoded run worth decoding: base64 of 18 bytes, hex of 12 (shorter secrets are rare)."""
ENCODED_MAX = 2048
"""Longest encoded run decoded; longer runs are data (images, bundles), not a pasted secret."""
_RUN = re.compile(rb"[A-Za-z0-9+/_-]{24,}+={0,2}")
_HEX = re.compile(rb"(?:[0-9a-fA-F]{2})+")
_URL_TO_STD = bytes.maketrans(b"-_", b"+/")
_PRINTABLE = bytes(range(32, 127)) + b"\t\n\r"
_DISCORD = re.compile(
    rb"(?<![A-Za-z0-9_.-])[MNO][A-Za-z0-9_-]{23,27}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,40}(?![A-Za-z0-9_.-])"
)

InnerScan = Callable[[str], list[tuple[int, str]]]
"""Scans decoded text; returns (priority, kind) of the secrets it holds."""


def decode_run(run: bytes) -> str | None:
    """The printable ASCII text that `run` (hex, base64 or base64url) encodes, or None."""
    try:
        if len(run) >= 32 and _HEX.fullmatch(run):
            data = bytes.fromhex(run.decode("ascii"))
        else:
            core = run.rstrip(b"=")
            if len(core) % 4 == 1:
                return None
            data = base64.b64decode(core.translate(_URL_TO_STD) + b"=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(data) < 12 or data.translate(None, _PRINTABLE):
        return None
    return data.decode("ascii")


def _discord(token: bytes) -> bool:
    """A Discord bot token: its first part is the base64 of the bot's numeric id (a snowflake), or
    the whole token is random enough."""
    first = token.split(b".", 1)[0]
    try:
        bot_id = base64.urlsafe_b64decode(first + b"=" * (-len(first) % 4))
    except (binascii.Error, ValueError):
        bot_id = b""
    if bot_id.isdigit() and 15 <= len(bot_id) <= 21:
        return True
    text = token.decode("ascii")
    return shannon_entropy(text) >= 4.5 and not text.isalpha()


def encoded_candidates(
    view: bytes, runs: list[tuple[int, int]], inner: InnerScan, raw: list[tuple[int, int]] | None
) -> list[tuple[int, int, int, str]]:
    """(start, end, priority, kind) of the encoded secrets and Discord tokens in `runs`."""
    out: list[tuple[int, int, int, str]] = []
    for s, e in runs:
        if e - s < ENCODED_MIN:
            continue
        if e - s >= 59:  # the shortest Discord token
            for m in _DISCORD.finditer(view, s, e):
                if raw is not None:
                    raw.append(m.span())
                if _discord(m.group()):
                    out.append((m.start(), m.end(), 0, "secret:discord"))
        for m in _RUN.finditer(view, s, e):
            a, b = m.span()
            if b - a > ENCODED_MAX:
                continue
            decoded = decode_run(m.group())
            if decoded is None:
                continue
            found = inner(decoded)
            if found:
                if raw is not None:
                    raw.append((a, b))
                prio, kind = min(found)
                out.append((a, b, prio, kind))
    return out
