"""PII detectors: e-mail, phone numbers (numbering-plan metadata), payment cards (Luhn), IBANs
(mod 97), US SSNs, public IP addresses.

Numbers are only PII when their checksum or numbering plan says so: a 16-digit order id that fails
Luhn, an IBAN with a wrong check digit, an SSN in the 000/666/9xx area are left alone. Every digit
pattern starts with a digit or `+` (the lookbehind comes after that first character) so the regex
engine can skip prose between digits in C instead of trying each position.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import NamedTuple

import phonenumbers
from phonenumbers.phonemetadata import PhoneMetadata

from sidecar.guards.secrets import PatternSpec

# --- validators ------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check that every payment card number satisfies."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(value: str) -> bool:
    digits = "".join(c for c in value if c.isdigit())
    if not 13 <= len(digits) <= 19 or len(set(digits)) < 3:
        return False
    if digits[0] not in "3456" and not (digits[0] == "2" and 2221 <= int(digits[:4]) <= 2720):
        return False  # issuer ranges: Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay/Maestro
    return luhn_ok(digits)


# ISO 13616 lengths per country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BI": 27,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DJ": 27,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FK": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HN": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "LY": 25,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MN": 20,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NI": 28,
    "NL": 18,
    "NO": 15,
    "OM": 23,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "RU": 33,
    "SA": 24,
    "SC": 31,
    "SD": 18,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "SO": 23,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
    "YE": 30,
}


def iban_ok(value: str) -> bool:
    """Country length and the ISO 7064 mod-97 check digits of an IBAN (spaces ignored)."""
    iban = value.replace(" ", "")
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not "02" <= iban[2:4] <= "98":
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


_SSN_RESERVED = frozenset({"078051120", "219099999", "123456789"})


def ssn_ok(value: str) -> bool:
    """A US SSN in an issuable range: area not 000/666/9xx, group not 00, serial not 0000."""
    digits = value.replace("-", "").replace(" ", "")
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return digits not in _SSN_RESERVED


# --- phone numbers: validated by the numbering-plan metadata of `phonenumbers` --------------

NATIONAL_REGIONS: tuple[str, ...] = ("US", "GB", "DE", "FR", "NL", "IN", "AU", "BR", "JP")
"""Regions whose national formats (no `+country`) count as phone numbers: the NANP and trunk-`0`
plans of the largest English-, European-, and Asian-language markets. A national number of any
other plan has no country to validate it against and is left alone (its `+` form is caught)."""


class _Plan(NamedTuple):
    region: str
    trunk: str  # national (trunk) prefix that written national numbers start with ("" for NANP)
    shape: re.Pattern[str]  # the plan's general pattern for a national significant number


def _plans() -> tuple[_Plan, ...]:
    out = []
    for region in NATIONAL_REGIONS:
        md = PhoneMetadata.metadata_for_region(region)
        assert md is not None and md.general_desc is not None
        trunk = "" if md.country_code == 1 else (md.national_prefix or "")
        out.append(_Plan(region, trunk, re.compile(md.general_desc.national_number_pattern or "(?!)")))
    return tuple(out)


_PLANS = _plans()


@lru_cache(maxsize=4096)
def international_phone(value: str) -> bool:
    """`+country …` that is a valid number of that country's plan (all plans)."""
    digits = sum(c.isdigit() for c in value)
    if not 7 <= digits <= 15:
        return False
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


@lru_cache(maxsize=4096)
def national_phone(value: str) -> bool:
    """A national-format number valid in one of `NATIONAL_REGIONS`: written with that plan's trunk
    prefix (NANP: ten digits), of a length and shape its metadata allows (a regex, ~1 µs), then
    confirmed by `phonenumbers` (~25 µs, only for the few that pass)."""
    digits = "".join(c for c in value if c.isdigit())
    if not 7 <= len(digits) <= 13:
        return False
    area_in_parens = value.startswith("(") and not value.startswith("(0")
    for plan in _PLANS:
        if plan.trunk and area_in_parens:
            national = digits  # `(11) 2345-6789`: an area code written without the trunk prefix
        elif plan.trunk:
            if not digits.startswith(plan.trunk):
                continue
            national = digits[len(plan.trunk) :]
        elif len(digits) != 10:
            continue
        else:
            national = digits
        if plan.shape.fullmatch(national) is None:
            continue
        try:
            number = phonenumbers.parse(value, plan.region)
        except phonenumbers.NumberParseException:
            continue
        if (
            phonenumbers.is_valid_number(number)
            if not plan.trunk
            else (phonenumbers.is_valid_number_for_region(number, plan.region))
        ):
            return True
    return False


def _ipv4(value: str) -> bool:
    """A public IPv4 address: private, loopback, link-local, shared, documentation, reserved and
    multicast ranges are left alone (technical answers quote them all the time)."""
    parts = value.split(".")
    if any((len(p) > 1 and p[0] == "0") or int(p) > 255 for p in parts):
        return False
    addr = ipaddress.IPv4Address(value)
    return addr.is_global and not addr.is_multicast


def _ipv6(value: str) -> bool:
    """A public IPv6 address (global unicast, not documentation, not multicast)."""
    if not any(c.isdigit() for c in value):
        return False
    try:
        addr = ipaddress.IPv6Address(value)
    except ValueError:
        return False
    return addr.is_global and not addr.is_multicast and addr not in _IPV6_DOC


_IPV6_DOC = ipaddress.IPv6Network("2001:db8::/32")


# --- e-mail: anchored at '@' so a long word never costs more than one left scan ----------------

_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_EMAIL_DOMAIN = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?){0,8}"
    r"\.([A-Za-z]{2,24})(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)
_FILE_TLDS = frozenset(
    {
        "png",
        "jpg",
        "jpeg",
        "gif",
        "svg",
        "webp",
        "ico",
        "js",
        "ts",
        "css",
        "map",
        "json",
        "lock",
        "txt",
        "yaml",
        "yml",
        "toml",
        "xml",
        "html",
        "tsx",
        "jsx",
        "mjs",
        "cjs",
        "wasm",
        "bmp",
    }
)
EMAIL_WIDTH = 64 + 1 + 9 * 64 + 25 + 2
"""Longest text an e-mail match can span (local part, '@', domain labels, TLD, lookahead)."""


def _in_url_authority(text: str, lo: int, start: int, at: int) -> bool:
    """True when `local@` is the user part of a URL (`scheme://user:pass@host`), not an address."""
    k = text.rfind("://", lo, start)
    if k == -1:
        return False
    between = text[k + 3 : at]
    return not any(c.isspace() or c in "/?#" for c in between)


def find_emails(text: str, pos: int = 0) -> Iterator[tuple[int, int]]:
    """Spans of e-mail addresses whose '@' lies at or after `pos` (local part not before `pos`)."""
    at = text.find("@", pos)
    while at != -1:
        nxt = at + 1
        if at > pos and text[at - 1] in _LOCAL_CHARS:
            m_dom = _EMAIL_DOMAIN.match(text, at + 1)
            start = at
            floor = max(pos, at - 64)
            while start > floor and text[start - 1] in _LOCAL_CHARS:
                start -= 1
            if m_dom:
                while start < at and text[start] in ".-+":
                    start += 1
                if _in_url_authority(text, max(pos, start - 300), start, at):
                    m_dom = None
                local = text[start:at]
                if m_dom and local and local != "git" and m_dom.group(1).lower() not in _FILE_TLDS:
                    yield start, m_dom.end()
                    nxt = m_dom.end()
        at = text.find("@", nxt)


# --- the table ---------------------------------------------------------------------------------

_HEX = "[0-9A-Fa-f]"
_IPV6_SEED = re.compile(r":(?=[0-9A-Fa-f]{0,4}:)")
"""Every IPv6 match has its first colon at most 4 characters in, followed by <= 4 hex and a colon."""

NUMBER_RUN = re.compile(r"[0-9][0-9 ().+/-]{5,}")
"""Runs of number characters long enough to hold a card, SSN, phone or IPv4 address (a run starts
at its first digit; a `(` or `+` just before it belongs to it): every match of a `region="number"`
row lies inside one such run, so those rows only run there."""
_HEX_START = "[0-9A-Fa-f](?<![\\w:.][0-9A-Fa-f])"

PII_SPECS: tuple[PatternSpec, ...] = (
    PatternSpec(
        "pii:credit_card",
        re.compile(
            r"[0-9](?<![\w-][0-9])(?<![0-9] [0-9])"
            r"(?:[0-9]{3}([ -]?)[0-9]{4}\1[0-9]{4}\1[0-9]{4}(?:\1[0-9]{3})?"
            r"|[0-9]{3}([ -]?)[0-9]{6}\2[0-9]{4,5}|[0-9]{12,18})(?![\w-]| [0-9])"
        ),
        validate=_card,
        region="number",
        min_digits=13,
        ws_free=False,
        start=re.compile(r"[0-9]"),
        extent=re.compile(r"[0-9 -]{0,30}"),
    ),
    PatternSpec(
        "pii:iban",
        re.compile(
            r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z][0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?"
            r"(?![A-Za-z0-9])"
        ),
        validate=iban_ok,
        anchor_re=re.compile(r"[A-Z]{2}[0-9]{2}"),
        shape=b"AA00",
        anchor_back=0,
        ws_free=False,
        start=re.compile(r"[A-Z]{2}[0-9]{2}"),
        extent=re.compile(r"[A-Z0-9 ]{0,48}"),
    ),
    PatternSpec(
        "pii:ssn",
        re.compile(r"[0-9](?<![\w-][0-9])[0-9]{2}([- ])[0-9]{2}\1[0-9]{4}(?![\w-])"),
        validate=ssn_ok,
        region="number",
        min_digits=9,
        need_any="- ",
        ws_free=False,
        start=re.compile(r"[0-9]"),
        extent=re.compile(r"[0-9 -]{0,16}"),
    ),
    PatternSpec(
        "pii:phone",
        re.compile(
            r"\+(?<![\w+]\+)[1-9][0-9]{0,3}+(?:[ .-]?+(?:\([0-9]{1,6}\)|[0-9]{1,6}+)){1,7}+"
            r"(?![\w]|[.,-][0-9])"
        ),
        validate=international_phone,
        region="number",
        need="+",
        ws_free=False,
        start=re.compile(r"\+"),
        extent=re.compile(r"[0-9 ().+-]{0,48}"),
    ),
    PatternSpec(
        "pii:phone",
        re.compile(
            r"[(0-9](?<![\w+.(-][(0-9])(?:(?<=\()[0-9]{3}\) ?|(?<=[0-9])[0-9]{2}[-. ])[0-9]{3}[-. ]"
            r"[0-9]{4}(?![\w-]|[.,][0-9])"
        ),
        validate=national_phone,
        region="number",
        min_digits=10,
        need_any="-. ",
        ws_free=False,
        start=re.compile(r"[(0-9]"),
        extent=re.compile(r"[0-9 ().-]{0,20}"),
    ),
    PatternSpec(
        "pii:phone",
        re.compile(
            r"\((?<![\w(]\()0?[1-9][0-9]{0,4}\) ?[0-9]{2,8}+(?:[ .-][0-9]{2,8}+){0,3}+(?![\w-]|[.,][0-9])"
        ),
        validate=national_phone,
        region="number",
        min_digits=7,
        need="(",
        ws_free=False,
        start=re.compile(r"\("),
        extent=re.compile(r"[0-9 ().-]{0,40}"),
    ),
    PatternSpec(
        "pii:phone",
        re.compile(
            r"0(?<![\w+.(/-]0)(?<![0-9] 0)[1-9][0-9]{0,4}+(?:[ ./-][0-9]{2,8}+){1,4}+"
            r"(?![\w-]|[.,/][0-9]| [0-9])"
        ),
        validate=national_phone,
        region="number",
        need="0",
        need_any=" ./-",
        ws_free=False,
        start=re.compile(r"0"),
        extent=re.compile(r"[0-9 ./-]{0,48}"),
    ),
    PatternSpec(
        "pii:ip",
        re.compile(r"[0-9](?<![\w.:][0-9])[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![\w]|\.[0-9])"),
        validate=_ipv4,
        region="number",
        need=".",
    ),
    PatternSpec(
        "pii:ip",
        re.compile(_HEX_START + _HEX + "{0,3}:(?:" + _HEX + "{1,4}:){6}" + _HEX + "{1,4}(?![\\w:])"),
        anchor_re=_IPV6_SEED,
        anchor_back=4,
        back_chars="0123456789abcdefABCDEF",
        validate=_ipv6,
    ),
    PatternSpec(
        "pii:ip",
        re.compile(
            _HEX_START
            + _HEX
            + "{0,3}(?::"
            + _HEX
            + "{1,4}){0,6}::(?:"
            + _HEX
            + "{1,4}(?::"
            + _HEX
            + "{1,4}){0,6})?(?![\\w:])"
        ),
        anchor_re=_IPV6_SEED,
        anchor_back=4,
        back_chars="0123456789abcdefABCDEF",
        validate=_ipv6,
    ),
)
"""PII detectors in priority order; `pii:ip` rows are dropped when IP detection is off."""
