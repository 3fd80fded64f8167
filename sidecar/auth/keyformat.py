"""The API key format: `sks_<key id>_<secret>_<checksum>` (in the spirit of GitHub's tokens).

- `sks_` marks a sidecar key, so secret scanners can recognise ours (see KEY_REGEX);
- the key id (12 base62 characters) is public: it names the key record;
- the secret is 43 base62 characters (256 bits from the OS CSPRNG);
- the checksum is CRC32 of everything before it, 6 base62 characters, so a mistyped or
  made-up key is refused before any Redis call or hashing.
Pure: no I/O.
"""

from __future__ import annotations

import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "sks_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_LEN, SECRET_LEN, CHECKSUM_LEN = 12, 43, 6
KEY_REGEX = r"sks_[0-9A-Za-z]{12}_[0-9A-Za-z]{43}_[0-9A-Za-z]{6}"
KEY_LEN = len(PREFIX) + ID_LEN + 1 + SECRET_LEN + 1 + CHECKSUM_LEN
_KEY = re.compile(KEY_REGEX)
_KEY_ID = re.compile(r"[0-9A-Za-z]{12}")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    key_id: str
    secret: str


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        digits.append(ALPHABET[rest])
    return "".join(reversed(digits))


def _random(width: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(width))


def checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LEN)


def new_key_id() -> str:
    return _random(ID_LEN)


def make_key(key_id: str) -> str:
    """A new raw key for `key_id`: shown once to the caller, never stored."""
    body = f"{PREFIX}{key_id}_{_random(SECRET_LEN)}"
    return f"{body}_{checksum(body)}"


def parse_key(raw: str) -> ParsedKey | None:
    """The key id and secret of a well-formed key with a valid checksum, else None."""
    if len(raw) != KEY_LEN or not _KEY.fullmatch(raw):
        return None
    body, _, check = raw.rpartition("_")
    if not secrets.compare_digest(checksum(body), check):
        return None
    return ParsedKey(key_id=raw[len(PREFIX):len(PREFIX) + ID_LEN],
                     secret=raw[len(PREFIX) + ID_LEN + 1:len(PREFIX) + ID_LEN + 1 + SECRET_LEN])


def is_key_id(value: str) -> bool:
    return bool(_KEY_ID.fullmatch(value))
