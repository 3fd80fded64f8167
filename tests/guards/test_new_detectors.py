"""The detectors added for issue 16: each finds what it should and leaves its look-alikes alone, a
redaction covers every original character of an encoded, spaced, invisible-character or fullwidth
secret, and a stream cut anywhere gives exactly the whole-text result.

Every key-shaped value is generated at run time from a seeded random source.
"""

from __future__ import annotations

import base64
import itertools
import random
import string
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.guards.redact import OutputScanner, apply_actions
from sidecar.guards.stream import StreamRedactor

SCANNER = OutputScanner()
REDACT = {"*": "redact"}
_R = random.Random(1616)
ALNUM = string.ascii_letters + string.digits


def rnd(n: int, alphabet: str = ALNUM) -> str:
    """Random characters; with a mixed-case alphabet, at least one digit, upper and lower case."""
    while True:
        s = "".join(_R.choice(alphabet) for _ in range(n))
        if not any(c.isupper() for c in alphabet):
            return s
        if any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s):
            return s


OPENAI = "sk-" + "proj-" + rnd(48)
GITHUB = "gh" + "p_" + rnd(36)
PASSWORD = rnd(6) + "!" + rnd(5)
TELEGRAM = "".join(_R.choice(string.digits) for _ in range(10)) + ":" + "AA" + rnd(33, ALNUM + "_-")
DISCORD = (
    base64.urlsafe_b64encode(str(_R.randrange(10**17, 10**18)).encode()).decode().rstrip("=")
    + "."
    + rnd(6)
    + "."
    + rnd(27)
)
BASIC = base64.b64encode(f"deploy:{PASSWORD}".encode()).decode()
BEARER = rnd(40, ALNUM + "._-")
AZURE_KEY = base64.b64encode(bytes(_R.randrange(256) for _ in range(64))).decode()
TEAMS = (
    "https://acme.webhook.office.com/webhookb2/"
    + "-".join(rnd(n, "0123456789abcdef") for n in (8, 4, 4, 4, 12))
    + "/IncomingWebhook/"
    + rnd(32, "0123456789abcdef")
    + "/"
    + "-".join(rnd(n, "0123456789abcdef") for n in (8, 4, 4, 4, 12))
)

# (name, text, secret substring that must not survive redaction, kind)
POSITIVES: list[tuple[str, str, str, str]] = [
    ("env password", f"PGPASSWORD={PASSWORD}\n", PASSWORD, "secret:generic"),
    ("yaml password", f"db:\n  password: '{PASSWORD}'\n", PASSWORD, "secret:generic"),
    ("json password", f'{{"user": "svc", "password": "{PASSWORD}"}}', PASSWORD, "secret:generic"),
    (
        "ado connection string",
        f"Server=sql1;User ID=app;Password={PASSWORD};Encrypt=True",
        PASSWORD,
        "secret:generic",
    ),
    ("xml value pair", f'<add key="MailPassword" value="{PASSWORD}" />', PASSWORD, "secret:generic"),
    ("spanish password", f"contraseña: {PASSWORD}", PASSWORD, "secret:generic"),
    ("russian password", f"пароль = '{PASSWORD}'", PASSWORD, "secret:generic"),
    (
        "basic auth header",
        f"curl -H 'Authorization: Basic {BASIC}' https://api.acme.io",
        BASIC,
        "secret:auth_header",
    ),
    ("bearer header", f'headers = {{"Authorization": "Bearer {BEARER}"}}', BEARER, "secret:auth_header"),
    ("telegram bot token", f"bot: {TELEGRAM}", TELEGRAM.split(":")[1], "secret:telegram"),
    ("discord bot token", f"client.run('{DISCORD}')", DISCORD, "secret:discord"),
    (
        "azure account key",
        f"AccountName=acme;AccountKey={AZURE_KEY};EndpointSuffix=x",
        AZURE_KEY,
        "secret:azure",
    ),
    (
        "teams webhook",
        f"post to {TEAMS} when done",
        TEAMS.split("IncomingWebhook/")[1],
        "secret:teams_webhook",
    ),
    (
        "base64 of an assignment",
        "config: " + base64.b64encode(f"OPENAI_API_KEY={OPENAI}".encode()).decode(),
        base64.b64encode(f"OPENAI_API_KEY={OPENAI}".encode()).decode()[:40],
        "secret:openai",
    ),
    (
        "hex of a key",
        "dump " + f"token {GITHUB}".encode().hex(),
        f"token {GITHUB}".encode().hex(),
        "secret:github",
    ),
    ("spaced letters", "the key is " + " ".join(OPENAI) + " ok", " ".join(OPENAI)[10:60], "secret:openai"),
    (
        "zero-width inside",
        "key: " + OPENAI[:10] + "\u200b" + OPENAI[10:30] + "\u200d" + OPENAI[30:],
        OPENAI[12:30],
        "secret:openai",
    ),
    (
        "fullwidth",
        "key " + "".join(chr(ord(c) + 0xFEE0) for c in OPENAI) + " done",
        "".join(chr(ord(c) + 0xFEE0) for c in OPENAI[5:30]),
        "secret:openai",
    ),
    ("international phone", "call +44 20 7946 0018 today", "7946 0018", "pii:phone"),
    ("e164 phone", "sms +4915123456789 please", "4915123456789", "pii:phone"),
    ("national phone, area code in parentheses", "Tel. (030) 12345678", "12345678", "pii:phone"),
    ("public ipv4", "the server at 81.2.69.160 answered", "81.2.69.160", "pii:ip"),
    ("public ipv6", "peer 2a00:1450:4001:82b::200e is up", "2a00:1450:4001:82b::200e", "pii:ip"),
]

NEGATIVES: list[tuple[str, str]] = [
    ("private ipv4", "bind 10.0.12.7, gateway 192.168.1.1, CGNAT 100.64.3.2"),
    ("documentation ipv6", "use 2001:db8::1 in examples; fe80::1 is link-local"),
    ("password from the environment", 'password = os.environ["DB_PASSWORD"]'),
    ("password variable", "self.password = password"),
    ("password placeholder", 'password: "<your-password>"'),
    ("password field name", "password_hint: 'Use 12 characters or more'"),
    ("changeme", "DB_PASSWORD=changeme"),
    ("bearer variable", 'headers = {"Authorization": f"Bearer {token}"}'),
    ("base64 of prose", "data " + base64.b64encode(b"nothing to see here, just some plain words").decode()),
    ("sha256 hex", "digest " + "".join(_R.choice("0123456789abcdef") for _ in range(64))),
    ("uuid", "id 3f2b8c1e-9a4d-4e7b-8f10-2c5d6e7a8b9c"),
    ("spaced prose", "a b c d e f g h i j k l m n o p q r s t u v w x y z"),
    ("snake_case value", "chars, tokens = _message_text_len(i, msg)"),
    ("order number", "order 2024-01-15-0042 shipped"),
]


@pytest.mark.parametrize(("name", "text", "secret", "kind"), POSITIVES, ids=[p[0] for p in POSITIVES])
def test_new_kinds_are_found_and_redacted_over_their_original_characters(
    name: str, text: str, secret: str, kind: str
) -> None:
    """The finding has the stable kind and the redacted text keeps no piece of the value."""
    findings = SCANNER.scan(text)
    assert kind in [f.kind for f in findings], (name, findings)
    redacted = apply_actions(text, findings, REDACT).text
    assert secret not in redacted
    assert f"[REDACTED:{kind}]" in redacted


@pytest.mark.parametrize(("name", "text"), NEGATIVES, ids=[n[0] for n in NEGATIVES])
def test_look_alikes_are_left_alone(name: str, text: str) -> None:
    """Private addresses, references, placeholders, hashes and plain encoded prose are not findings."""
    assert SCANNER.scan(text) == []


def test_invisible_characters_are_redacted_with_the_secret() -> None:
    """A zero-width character inside a key is inside the redaction, not left dangling."""
    text = "key: " + OPENAI[:10] + "\u200b" + OPENAI[10:] + " end"
    assert apply_actions(text, SCANNER.scan(text), REDACT).text == "key: [REDACTED:secret:openai] end"


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


_FILLER = ["Sure, here it is: ", "\n", " and ", "x = y + z; ", "See below. ", "a b c ", "。", "１２ "]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    picks=st.lists(
        st.integers(0, len(POSITIVES) + len(NEGATIVES) + len(_FILLER) - 1), min_size=1, max_size=8
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=14),
    actions=st.sampled_from(
        [REDACT, {"secret": "redact", "pii": "flag"}, {"secret": "block", "pii": "redact"}]
    ),
)
def test_every_new_detector_streams_like_the_whole_text(
    picks: list[int], cuts: list[int], actions: dict[str, str]
) -> None:
    """Random replies built from the new positives, look-alikes and filler, cut anywhere: the stream
    emits exactly the whole-text decision, with the same findings and the same block."""
    pool = [p[1] for p in POSITIVES] + [n[1] for n in NEGATIVES] + _FILLER
    text = "".join(pool[i] for i in picks)
    cuts = sorted({c for c in cuts if c < len(text)})
    red = StreamRedactor(SCANNER, actions)
    out = "".join(red.feed(c) for c in split_at(text, cuts)) + red.finish()
    whole = apply_actions(text, SCANNER.scan(text), actions)
    assert out == whole.text
    assert red.blocked == whole.blocked
    assert tuple(red.findings) == whole.findings


@pytest.mark.parametrize(("name", "text", "secret", "kind"), POSITIVES, ids=[p[0] for p in POSITIVES])
def test_each_new_positive_split_at_every_position_is_redacted(
    name: str, text: str, secret: str, kind: str
) -> None:
    """Two chunks, cut at every offset: the stream equals the whole text and never leaks the value."""
    want = apply_actions(text, SCANNER.scan(text), REDACT).text
    for cut in range(1, len(text)):
        red = StreamRedactor(SCANNER, REDACT)
        assert red.feed(text[:cut]) + red.feed(text[cut:]) + red.finish() == want
