"""Secret detectors: provider keys and tokens, private keys, JWTs, passwords in URLs and assignments.

Each detector is one row (`PatternSpec`) of a table: a bounded regex, the literal anchors that must
occur in the text before the regex runs at all (so prose without `sk-`, `AKIA`, `eyJ`... costs a few
substring checks), and a validator that turns away documentation placeholders and low-entropy
look-alikes. The rows also carry what the stream scanner needs to know to hold back as little text as
possible: whether a match can contain whitespace and, if it can, where a match may start and how far
an attempt may reach.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from re import _parser as _sre_parser  # type: ignore[attr-defined]
from typing import Any

#: Lookarounds have no width in `getwidth`; ours look at most this many characters past a match.
LOOKAROUND_MARGIN = 4
#: Upper bound on any built-in pattern's width; unbounded patterns are refused at construction.
MAX_PATTERN_WIDTH = 10_000

Validator = Callable[[str], bool]


def pattern_width(regex: re.Pattern[str]) -> int:
    """Longest text a match attempt of `regex` can examine (its max width plus lookaround margin)."""
    parsed: Any = _sre_parser.parse(regex.pattern, regex.flags)
    width = int(parsed.getwidth()[1])
    if width > MAX_PATTERN_WIDTH:
        raise ValueError(f"pattern is unbounded or too wide ({width}): {regex.pattern[:40]!r}")
    return width + LOOKAROUND_MARGIN


@dataclass(frozen=True, slots=True)
class PatternSpec:
    """One detector row: what to match, what it is called, and how the stream may cut around it.

    `group` names the capture group(s) whose span is the finding (0 = the whole match); the whole
    match is still the "raw" span that a stream cut must not split. `anchors` are literals of which
    one must occur in the text (in its lower-case form when `anchors_ci`) for the regex to run.
    `ws_free` says a match attempt can never cross whitespace. For the others, `start` matches
    wherever a match may begin and `extent` (matched at such a start) reaches at least as far as the
    regex could look; `extent_margin` covers optional tails the extent regex does not see.
    When `anchor_back` is set, every match starts at most that many characters before an anchor
    occurrence, so the scanner tries `regex.match` only there instead of searching the whole text
    (a leading lookbehind or a case-insensitive keyword defeats the regex engine's own prefix scan);
    a tuple gives one distance per anchor; with `back_chars` the start is found by stepping back over
    those characters (at most `anchor_back`) instead of trying every distance. `anchor_re` does the
    same with a regex for the anchors; `follow` prunes anchors after which no match can reach its
    operator within `follow_window` (checked at each anchor); `follow_chars` says every match has one
    of these characters within `follow_window` of its start, so when they are rare the scanner
    searches anchors only near them;
    `region="number"` runs the regex only inside runs of number characters (see pii.py); and
    `shape` must occur in the text's class map (capitals as `A`, digits as `0`, ` ().+/-` as `1`,
    the rest `.`) for the row to run. `value_min` is the shortest whitespace-free value the row
    can match (rows whose value is a long word are skipped for texts without long words). A number
    row runs only on runs with at least `min_digits` digits (its regex cannot match fewer) that
    contain `need` and, when `need_any` is set, one of its characters (e.g. an SSN's separator).
    `anchor_after` lists, per anchor, what the (lower-case, for `anchors_ci`) text must end with
    just before an occurrence for the regex's own lookbehind to pass (`api_` before `key`): the
    scanner drops the others without trying the regex (only where those characters are ASCII,
    so case folding cannot differ). `anchor_filters`, one per anchor, are regexes over the same
    text that match at every occurrence of the anchor where the row's regex could match (and maybe
    elsewhere): when the scanner searches the whole text it runs these instead of plain `find`s.
    """

    kind: str
    regex: re.Pattern[str]
    group: tuple[int, ...] = (0,)
    anchors: tuple[str, ...] = ()
    anchors_ci: bool = False
    validate: Validator | None = None
    ws_free: bool = True
    start: re.Pattern[str] | None = None
    extent: re.Pattern[str] | None = None
    extent_margin: int = LOOKAROUND_MARGIN
    anchor_back: int | tuple[int, ...] | None = None
    anchor_re: re.Pattern[str] | None = None
    back_chars: str = ""
    follow: re.Pattern[str] | None = None
    follow_window: int = 0
    follow_chars: str = ""
    region: str | None = None
    shape: bytes = b""
    value_min: int = 0
    min_digits: int = 0
    need: str = ""
    need_any: str = ""
    anchor_after: tuple[tuple[str, tuple[str, ...]], ...] = ()
    anchor_filters: tuple[re.Pattern[str], ...] = ()
    width: int = field(default=0)
    min_width: int = field(default=0)

    def __post_init__(self) -> None:
        if self.width == 0:
            object.__setattr__(self, "width", pattern_width(self.regex))
            parsed: Any = _sre_parser.parse(self.regex.pattern, self.regex.flags)
            object.__setattr__(self, "min_width", int(parsed.getwidth()[0]))
        if not self.ws_free and self.start is None:
            object.__setattr__(self, "start", _ANYWHERE)


_ANYWHERE = re.compile(r"(?s).")


def spec_from_regex(kind: str, regex: str | re.Pattern[str], *, ws_free: bool = False) -> PatternSpec:
    """Wrap a caller's regex (e.g. the sidecar key format) as a detector row.

    Without `ws_free=True` the stream conservatively holds back the pattern's full width.
    """
    compiled = re.compile(regex) if isinstance(regex, str) else regex
    return PatternSpec(kind, compiled, ws_free=ws_free)


# --- validators ------------------------------------------------------------------------------

_PLACEHOLDER_WORDS = (
    "example", "placeholder", "dummy", "redacted", "insert", "changeme", "change_me", "replace",
    "sample", "0000000000", "1234567890", "abcdefghij", "secret_key", "my_key", "mykey", "token_here",
    "...", "<", ">", "${", "{{", "****",
)  # fmt: skip
_SHORT_PLACEHOLDER = re.compile(
    r"(?<![A-Za-z0-9])(?:xxxx|your|here|fake|todo)|(?:xxxx|your|here|fake|todo)(?![A-Za-z0-9])",
    re.IGNORECASE,
)
"""Short stand-in words count only at a word edge (`sk-your-key`, `YOUR_KEY`), so a random token that
happens to contain `todo` is still a token."""


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


_PLACEHOLDER_RE = re.compile(
    "|".join(re.escape(v) for w in _PLACEHOLDER_WORDS for v in dict.fromkeys((w, w.upper(), w.title())))
)


def is_placeholder(value: str) -> bool:
    """True for documentation stand-ins: `YOUR_API_KEY`, `xxxx`, `...EXAMPLE`, low variety."""
    if _PLACEHOLDER_RE.search(value) or _SHORT_PLACEHOLDER.search(value):
        return True
    return len(value) >= 12 and len(set(value)) < 6


_LOWER = frozenset(string.ascii_lowercase)
_UPPER = frozenset(string.ascii_uppercase)
_DIGIT = frozenset(string.digits)


def _classes(value: str) -> int:
    chars = set(value)
    lower, upper, digit = (
        not _LOWER.isdisjoint(chars),
        not _UPPER.isdisjoint(chars),
        not _DIGIT.isdisjoint(chars),
    )
    other = bool(chars - _LOWER - _UPPER - _DIGIT)
    return lower + upper + digit + other


def _token(min_entropy: float = 3.0, min_classes: int = 2) -> Validator:
    """A random-looking token: not a placeholder, enough entropy and character variety."""

    def check(value: str) -> bool:
        return (
            not is_placeholder(value)
            and shannon_entropy(value) >= min_entropy
            and _classes(value) >= min_classes
        )

    return check


def _not_placeholder(value: str) -> bool:
    return not is_placeholder(value)


_URL_PLACEHOLDERS = frozenset(
    {
        "password",
        "pass",
        "passwd",
        "pwd",
        "secret",
        "pw",
        "token",
        "changeme",
        "pass123",
        "password123",
        "mypassword",
        "hunter2",
    }
)


def _url_password(value: str) -> bool:
    """A password in `scheme://user:PASSWORD@host` that is not `password`, `${VAR}`, `****`."""
    low = value.lower()
    if low in _URL_PLACEHOLDERS or is_placeholder(value):
        return False
    if _TEMPLATE.fullmatch(value) or set(value) <= {"*", "x", "X", "."}:
        return False
    return len(value) >= 3


_SLUG = re.compile(r"_*[a-z]+(?:[-_.][a-z]+)*|_*[A-Z]+(?:_[A-Z]+)+")
_EXPRESSION = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?|[A-Za-z_][\w.]*\([\w.,'\" ]*\)?")
_TEMPLATE = re.compile(
    r"\$[A-Za-z_][A-Za-z0-9_]*|\$\{[^}]*\}|\$\(.*\)|%(?:\(\w+\))?[sd]|%[A-Za-z_]+%|\{\{?[^{}]*\}\}?|<[^<>]*>"
    r"|\[[^\[\]]*\]|#\{[^}]*\}|\{[0-9]+\}|:[a-z_]+"
)
"""Environment and template references (`$DB_PASS`, `${TOKEN}`, `%(pw)s`, `{{ secret }}`, `<password>`)."""


_ASSIGN_PLACEHOLDER = re.compile(
    r"example|placeholder|dummy|redacted|insert|changeme|change_me|replace|sample|your[_-]?|xxxx|\*\*\*|\.\.\.",
    re.IGNORECASE,
)


def _assigned_secret(value: str) -> bool:
    """A literal value assigned to a `password`/`api_key`-like name that looks random.

    Rejects type names, identifiers, expressions (`settings.SECRET`, `os.getenv(...)`), paths
    and placeholders: the value must mix letters with digits or symbols and carry entropy.
    """
    if len(value) < 8 or _ASSIGN_PLACEHOLDER.search(value) or len(set(value)) < 6:
        return False
    if _TEMPLATE.fullmatch(value) or value.startswith(("/", "./", "~/", "http")):
        return False
    if _EXPRESSION.fullmatch(value):
        return False
    has_letter = any(c.isalpha() for c in value)
    has_other = any(not c.isalpha() for c in value)
    if not (has_letter and has_other):
        return False
    low = value.lower()
    if any(w in low for w in ("password", "secret", "token", "apikey", "api_key")):
        return False
    if _SLUG.fullmatch(value):
        return False  # a name such as `prod-db-credentials`, not a secret
    return shannon_entropy(value) >= min(3.0, 0.7 * math.log2(len(value)))


_DUMMY_PASSWORDS = frozenset(
    {
        "password", "passwd", "pass", "pwd", "secret", "changeme", "change_me", "none", "null", "nil",
        "true", "false", "example", "test", "testing", "dummy", "sample", "default", "empty", "required",
        "optional", "string", "text", "hidden", "redacted", "mypassword", "yourpassword", "password123",
        "passw0rd", "p@ssw0rd", "p@ssword", "admin", "root", "user", "username", "guest", "foobar", "foo",
        "bar", "xxx", "abc123", "12345678", "123456", "1234", "qwerty", "letmein", "hunter2",
    }
)  # fmt: skip
"""Values that are a field's name, a type or a textbook stand-in rather than somebody's password."""
_VARIABLE = re.compile(r"[$@%&]?[A-Za-z_][A-Za-z_]*(?:[.:>-]+[A-Za-z_][A-Za-z0-9_]*)*(?:\(\))?")
"""An identifier, a variable (`$pw`, `@pass`) or an attribute path without digits: in an unquoted
assignment that is code reading a password, not a password."""


def _password_value(value: str) -> bool:
    """A literal assigned to a `password`/`pwd`/`passphrase` name (or a connection string's
    `Password=`): short and low-entropy values count (people choose weak passwords), but not a field
    name or textbook stand-in, a template or environment reference, an expression or a variable,
    and, unquoted, not a bare identifier."""
    v = value
    if len(v) < 4 or v != v.strip() or v.count(" ") > 1:
        return False
    low = v.lower()
    if low in _DUMMY_PASSWORDS or _ASSIGN_PLACEHOLDER.search(v) or _TEMPLATE.fullmatch(v):
        return False
    if len(set(v)) < 3 or (len(v) >= 8 and len(set(v)) < 4):
        return False  # `****`, `xxxxxxxx`, `aaaa1111`
    if _VARIABLE.fullmatch(v) and not any(c.isdigit() for c in v) and (v.islower() or "_" in v or "." in v):
        return False  # `password`, `self.password`, `db_pass`, `getpass()`
    if v.startswith(("/", "./", "~/", "http://", "https://", "file:")) or v.endswith(("()", ")")):
        return False
    return not any(op in v for op in (" = ", " + ", "; ", ", "))


def _auth_value(value: str) -> bool:
    """The credential after `Bearer`/`Basic`: a Basic value must decode to `user:password`; a bearer
    token must look random (entropy, character variety), not `$TOKEN`, `<token>` or a word."""
    if _ASSIGN_PLACEHOLDER.search(value) or _TEMPLATE.fullmatch(value):
        return False
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    if ":" in decoded and decoded.isprintable():
        user, _, password = decoded.partition(":")
        return bool(user) and len(password) >= 3 and password.lower() not in _DUMMY_PASSWORDS
    return len(value) >= 12 and _TOKEN(value)


def _pem(value: str) -> bool:
    return "xxxx" not in value and "XXXX" not in value and "..." not in value


# --- the table ---------------------------------------------------------------------------------

_B = r"(?<![A-Za-z0-9_\-])"  # token start: not inside a longer word
_E = r"(?![A-Za-z0-9_\-])"  # token end


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


_TOKEN = _token()
_STRONG = _token(min_entropy=3.5, min_classes=2)

_KEY_OWNERS = (
    "api", "access", "auth", "private", "secret", "signing", "encryption", "master", "client", "consumer",
    "app", "account", "service", "session", "license", "storage", "subscription", "shared",
)  # fmt: skip
_KEY_PREFIXES = tuple(f"{o}{sep}" for o in _KEY_OWNERS for sep in ("_", "-", ""))
_GENERIC_KEYWORDS = (
    r"(?:secret|token|credentials?|key(?:" + "|".join(f"(?<={p}key)" for p in _KEY_PREFIXES) + "))"
)
"""Names that announce a secret; a bare `key` counts only as `api_key`, `accessKey`... (lookbehind,
so that every match starts at its anchor)."""
_PASSWORD_KEYWORDS = r"(?:pass(?:word|wd|phrase|wort)?|pwd)"  # noqa: S105 - a regex
"""Names that announce a password: also `PGPASSWORD`, `DB_PASS`, `passwort`, `mot_de_passe`."""
_NOT_A_VALUE_NAME = (
    r"(?![A-Za-z0-9_.-]{0,16}?(?i:hint|label|field|policy|length|regex|pattern|prompt|placeholder|reset|"
    r"_?url|path|file|hash|salt|expir|confirm|strength|input|_?id\b|_?name\b|_?type\b|rule|"
    r"enabled|required|changed|grant|manager|less\b))"
)
"""Name tails that hold something about a password, not the password (`password_hint`, `passwordFile`)."""
_GENERIC_REST = (
    r"[\"'\[\]]{0,2}+[ \t]{0,12}+(?::=|=>|=|:)[ \t]{0,12}+@?"
    r"(?:([\"'`])([^\s\"'`]{8,120}+)\1|([^\s\"'`,;)(\[\]{}<>]{8,120}+)(?![^\s\"'`,;)(\[\]{}<>]))"
)
_PASSWORD_REST = (
    r"(?:[\"'\[\]]{0,2}+[ \t]{0,12}+(?::=|=>|=|:)[ \t]{0,12}+@?"  # noqa: S105 - a regex
    r"(?:([\"'`])([^\s\"'`][^\"'`\n]{2,118}+)\1"
    r"|([^\s\"'`,;)(\[\]{}<>]{4,120}+)(?![^\s\"'`,;)(\[\]{}<>]))"
    r"|[\"'][ \t]{1,4}value[ \t]{0,4}=[ \t]{0,4}"
    r"([\"'])([^\s\"'][^\"'\n]{2,118}+)\4)"
)
"""As `_GENERIC_REST` (shorter values), plus a quoted value in an XML attribute pair
(`<add key="DbPassword" value="x"/>`)."""
_GENERIC = _rx(_GENERIC_KEYWORDS + r"[A-Za-z0-9_.-]{0,24}+" + _GENERIC_REST, re.IGNORECASE)
_PASSWORD = _rx(
    _PASSWORD_KEYWORDS + _NOT_A_VALUE_NAME + r"[A-Za-z0-9_.-]{0,24}+" + _PASSWORD_REST, re.IGNORECASE
)
_NAME_LOWER = "[a-z0-9_.\\-\u017f\u0131]"
"""`[A-Za-z0-9_.-]` under IGNORECASE, read in the lower-case text: the same characters (case
folding also admits ſ, ı, K and İ, which lower-case to ſ, ı, k and, in `_lower`, i)."""


def _generic_filter(anchor: str, name_max: int, rest: str = _GENERIC_REST) -> re.Pattern[str]:
    """Matches, in the lower-case text, at every occurrence of `anchor` where `_GENERIC` could match
    (the keyword's own letters and the name tail as one possessive run of at most `name_max`
    characters, no `key` lookbehind: a superset). Its literal prefix lets the regex engine scan for
    the anchor in C and reject the occurrences without an assignment there, so a `token` in
    `"total_tokens": 42` never reaches Python."""
    return _rx(re.escape(anchor) + "(?=" + _NAME_LOWER + f"{{0,{name_max}}}+" + rest + ")")


GENERIC_REACH = 11 + 24 + 2 + 12 + 1
"""A `secret:generic` match has its operator within this many characters of its start: keyword
(<= 11, `credentials`), name tail (<= 24), quotes (<= 2), blanks (<= 12), then the operator itself."""
_AWS_SECRET = _rx(
    r"aws[A-Za-z0-9_.-]{0,30}?(?:secret|sk)[A-Za-z0-9_.-]{0,24}[\"']?[ \t]{0,4}(?:=>|[:=])[ \t]{0,4}"
    r"[\"']?([A-Za-z0-9/+]{40}+)(?![A-Za-z0-9/+])",
    re.IGNORECASE,
)
_AZURE_KEY = _rx(
    r"azure[A-Za-z0-9_.-]{0,30}?(?:key|secret)[A-Za-z0-9_.-]{0,12}[\"']?[ \t]{0,4}(?:=>|[:=])"
    r"[ \t]{0,4}[\"']?([a-fA-F0-9]{32}+)(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_ASSIGN_EXTENT = _rx(
    r"[A-Za-z0-9_.-]{0,60}[\"'\[\]]{0,2}[ \t]{0,12}[:=>-]{0,2}[ \t]{0,12}@?[\"'`]?[^\s\"'`]{0,121}",
    re.IGNORECASE,
)
"""How far a `password=`-style assignment can reach from its start; case-insensitive like the rows'
regexes, so a keyword spelled with a character that folds to ASCII (the Kelvin sign in `api_Key`)
is covered too."""
_PASSWORD_EXTENT = _rx(
    r"[\w.-]{0,60}[\"'\[\]]{0,2}[ \t]{0,12}(?:value[ \t]{0,4})?[:=>-]{0,2}"
    r"[ \t]{0,12}@?(?:[\"'`][^\"'`\n]{0,119}|[^\s\"'`]{0,121})",
    re.IGNORECASE,
)
"""`_ASSIGN_EXTENT` for the password rows, whose quoted values may hold a space."""
_PEM_BODY = r"[A-Za-z0-9+/=\s:,]"
_PRIVATE_KEY = _rx(
    r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----"
    + _PEM_BODY
    + r"{40,8000}(?:-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)?-----)?"
)
_PRIVATE_KEY_EXTENT = _rx(r"-----BEGIN[A-Z0-9 ]{0,70}-----" + _PEM_BODY + r"{0,8000}")

_FOREIGN_PASSWORD_WORDS = (
    "contraseña", "Contraseña", "CONTRASEÑA", "пароль", "Пароль", "ПАРОЛЬ", "密码", "密碼", "パスワード",
    "비밀번호", "hasło", "Hasło", "HASŁO", "lösenord", "Lösenord", "κωδικός", "Κωδικός", "şifre", "Şifre",
    "mật_khẩu", "Mật khẩu",
)  # fmt: skip
"""`password` in other languages, case-sensitive: every word has a non-ASCII letter, so an ASCII
text pays nothing for them (`str.find` of a character the string cannot hold returns at once)."""
_FOREIGN_PASSWORD = _rx(
    "(?:" + "|".join(re.escape(w) for w in _FOREIGN_PASSWORD_WORDS) + r")[\w.-]{0,24}+" + _PASSWORD_REST
)
URL_REACH = 3 + 128 + 1 + 256 + 1
"""A `secret:url_password` match has its `@` within this many characters of its start (`://`, user
<= 128, `:`, password <= 256): most texts have no `@` at all, so the scanner then skips the `://`
search (a single-character search is ~40 times faster than a multi-character one)."""

SIDECAR_KEY_REGEX = r"sks_[A-Za-z0-9]{12}_[A-Za-z0-9]{43}_[A-Za-z0-9]{6}"
"""The sidecar's own key shape as assumed today; the lead may pass another via `extra_patterns`."""

SECRET_SPECS: tuple[PatternSpec, ...] = (
    PatternSpec(
        "secret:private_key",
        _PRIVATE_KEY,
        anchors=("-----BEGIN",),
        anchor_back=0,
        validate=_pem,
        ws_free=False,
        start=_rx(r"-----BEGIN"),
        extent=_PRIVATE_KEY_EXTENT,
        extent_margin=80,
    ),
    PatternSpec(
        "secret:sidecar", _rx(_B + SIDECAR_KEY_REGEX + _E), anchors=("sks_",), anchor_back=0, validate=_TOKEN
    ),
    PatternSpec(
        "secret:sidecar",
        _rx(_B + r"sk-sc-[A-Za-z0-9_-]{20,120}" + _E),
        anchors=("sk-sc-",),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:anthropic",
        _rx(_B + r"sk-ant-[a-z]{2,8}[0-9]{0,3}-[A-Za-z0-9_-]{32,200}" + _E),
        anchors=("sk-ant-",),
        anchor_back=0,
        validate=_STRONG,
    ),
    PatternSpec(
        "secret:openai",
        _rx(_B + r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{32,200}" + _E),
        anchors=("sk-",),
        anchor_back=0,
        validate=_STRONG,
    ),
    PatternSpec(
        "secret:aws",
        _rx(_B + r"(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}" + _E),
        anchors=("AKIA", "ASIA", "ABIA", "ACCA", "A3T"),
        anchor_back=0,
        validate=_not_placeholder,
    ),
    PatternSpec(
        "secret:aws",
        _AWS_SECRET,
        group=(1,),
        anchors=("aws",),
        anchors_ci=True,
        value_min=32,
        anchor_back=0,
        follow=_rx(r"[=:>]"),
        follow_window=96,
        validate=_TOKEN,
        ws_free=False,
        start=_rx(r"aws", re.IGNORECASE),
        extent=_ASSIGN_EXTENT,
    ),
    PatternSpec(
        "secret:github",
        _rx(_B + r"(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,251})" + _E),
        anchors=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:gitlab",
        _rx(_B + r"gl(?:pat|dt|rt|ptt|ft|cbt|soat|oas|imt|agent)-[A-Za-z0-9_-]{20,80}" + _E),
        anchors=(
            "glpat-",
            "gldt-",
            "glrt-",
            "glptt-",
            "glft-",
            "glcbt-",
            "glsoat-",
            "gloas-",
            "glimt-",
            "glagent-",
        ),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:slack_webhook",
        _rx(
            r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/]{20,160}"
            r"(?![A-Za-z0-9_/])"
        ),
        anchors=("hooks.slack.com",),
        anchor_back=8,
        validate=_not_placeholder,
    ),
    PatternSpec(
        "secret:slack",
        _rx(_B + r"(?:xox[abposre]|xapp)-[A-Za-z0-9-]{20,250}" + _E),
        anchors=("xox", "xapp-"),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:discord_webhook",
        _rx(
            r"https://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api/webhooks/[0-9]{15,22}/"
            r"[A-Za-z0-9_-]{50,100}" + _E
        ),
        anchors=("discord",),
        anchor_back=15,
        validate=_not_placeholder,
    ),
    PatternSpec(
        "secret:stripe",
        _rx(_B + r"(?:(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,247}|whsec_[A-Za-z0-9]{32,100})" + _E),
        anchors=("_live_", "_test_", "whsec_"),
        anchor_back=2,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:huggingface",
        _rx(_B + r"(?:hf_[A-Za-z0-9]{34,40}|api_org_[A-Za-z0-9]{34})" + _E),
        anchors=("hf_", "api_org_"),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:npm", _rx(_B + r"npm_[A-Za-z0-9]{36}" + _E), anchors=("npm_",), anchor_back=0, validate=_TOKEN
    ),
    PatternSpec(
        "secret:pypi",
        _rx(_B + r"pypi-AgE[A-Za-z0-9_-]{50,300}" + _E),
        anchors=("pypi-",),
        anchor_back=0,
        validate=_not_placeholder,
    ),
    PatternSpec(
        "secret:google",
        _rx(_B + r"(?:AIza[0-9A-Za-z_-]{35}|GOCSPX-[A-Za-z0-9_-]{28}|ya29\.[0-9A-Za-z_-]{30,300})" + _E),
        anchors=("AIza", "GOCSPX-", "ya29."),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:azure",
        _rx(r"[?&]sig=([A-Za-z0-9%+/=]{30,120})(?![A-Za-z0-9%+/=])"),
        group=(1,),
        anchors=("sig=",),
        anchor_back=1,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:azure",
        _rx(r"(?<![A-Za-z0-9_~.\-])[A-Za-z0-9_~.-]{3}8Q~[A-Za-z0-9_~.-]{34}(?![A-Za-z0-9_~-])"),
        anchors=("8Q~",),
        anchor_back=3,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:azure",
        _AZURE_KEY,
        group=(1,),
        anchors=("azure",),
        anchors_ci=True,
        value_min=32,
        anchor_back=0,
        follow=_rx(r"[=:>]"),
        follow_window=96,
        validate=_TOKEN,
        ws_free=False,
        start=_rx(r"azure", re.IGNORECASE),
        extent=_ASSIGN_EXTENT,
    ),
    PatternSpec(
        "secret:jwt",
        _rx(_B + r"eyJ[A-Za-z0-9_-]{10,1000}\.eyJ[A-Za-z0-9_-]{10,2000}\.[A-Za-z0-9_-]{10,1000}" + _E),
        anchors=("eyJ",),
        anchor_back=0,
        validate=_not_placeholder,
    ),
    PatternSpec(
        "secret:telegram",
        _rx(r":(?<=[0-9]{5}:)(AA[A-Za-z0-9_-]{30,40})" + _E),
        group=(1,),
        anchors=(":AA",),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:auth_header",
        _rx(r"(?:Bearer|Basic) ([A-Za-z0-9._~+/-]{8,4000}={0,2})(?![A-Za-z0-9._~+/=-])"),
        group=(1,),
        anchors=("Bearer ", "Basic "),
        anchor_back=0,
        validate=_auth_value,
        ws_free=False,
        start=_rx(r"Bearer |Basic "),
        extent=_rx(r"(?:Bearer|Basic) [A-Za-z0-9._~+/=-]{0,4002}"),
    ),
    PatternSpec(
        "secret:azure",
        _rx(
            r"(?:AccountKey|SharedAccessKey)[ \t]{0,4}=[ \t]{0,4}[\"']?"
            r"([A-Za-z0-9+/]{20,120}={0,2})(?![A-Za-z0-9+/=])"
        ),
        group=(1,),
        anchors=("AccountKey", "SharedAccessKey"),
        anchor_back=0,
        validate=_TOKEN,
    ),
    PatternSpec(
        "secret:teams_webhook",
        _rx(r"IncomingWebhook/[A-Za-z0-9]{16,64}/[A-Za-z0-9-]{16,64}(?:/[A-Za-z0-9_-]{10,100})?" + _E),
        anchors=("IncomingWebhook/",),
        anchor_back=0,
        validate=_not_placeholder,
    ),
    PatternSpec(
        "secret:google_chat_webhook",
        _rx(r"messages\?key=[A-Za-z0-9_-]{20,60}&token=[A-Za-z0-9_%=-]{20,120}" + _E),
        anchors=("messages?key=",),
        anchor_back=0,
        validate=_not_placeholder,
    ),
    PatternSpec(
        "secret:url_password",
        _rx(r"://[^\s:/?#@\"'<>]{0,128}:([^\s:/?#\"'<>]{1,256})@(?=[A-Za-z0-9\[])"),
        group=(1,),
        anchors=("://",),
        anchor_back=0,
        follow_window=URL_REACH,
        follow_chars="@",
        validate=_url_password,
    ),
    PatternSpec(
        "secret:generic",
        _PASSWORD,
        group=(2, 3, 5),
        anchors=("pass", "pwd"),
        anchors_ci=True,
        anchor_filters=(
            _generic_filter("pass", 6 + 24, _PASSWORD_REST),  # `phrase` and the name tail
            _generic_filter("pwd", 24, _PASSWORD_REST),
        ),
        anchor_back=0,
        follow_window=GENERIC_REACH,
        follow_chars="=:",
        validate=_password_value,
        ws_free=False,
        start=_rx(_PASSWORD_KEYWORDS, re.IGNORECASE),
        extent=_PASSWORD_EXTENT,
    ),
    PatternSpec(
        "secret:generic",
        _FOREIGN_PASSWORD,
        group=(2, 3, 5),
        anchors=_FOREIGN_PASSWORD_WORDS,
        anchor_back=0,
        validate=_password_value,
        ws_free=False,
        start=_rx("|".join(_FOREIGN_PASSWORD_WORDS)),
        extent=_PASSWORD_EXTENT,
    ),
    PatternSpec(
        "secret:generic",
        _GENERIC,
        group=(2, 3),
        anchors=("secret", "token", "key", "credential"),
        anchors_ci=True,
        anchor_after=(("key", _KEY_PREFIXES),),
        anchor_filters=(
            _generic_filter("secret", 24),
            _generic_filter("token", 24),
            _generic_filter("key", 24),
            _generic_filter("credential", 1 + 24),  # `s` and the name tail
        ),
        anchor_back=0,
        follow_window=GENERIC_REACH,
        follow_chars="=:",
        validate=_assigned_secret,
        ws_free=False,
        start=_rx(_GENERIC_KEYWORDS, re.IGNORECASE),
        extent=_ASSIGN_EXTENT,
    ),
)
"""Secret detectors in priority order: on equal spans the earlier row names the finding."""
