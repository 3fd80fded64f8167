"""Labelled cases for the output scanner: positives for every kind, in prose and code, and hard negatives.

Secret-shaped strings are built at run time from a seeded random generator and concatenated pieces,
so no literal key, token or private-key block is tracked in git. Run as a script to print per-kind
recall and false positives and refresh the table in docs/output-eval.md:

    .venv/bin/python -m tests.guards.cases.output_cases --write
"""

from __future__ import annotations

import base64
import json
import random
import string
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sidecar.guards.pii import IBAN_LENGTHS, luhn_ok
from sidecar.guards.redact import OutputScanner

PROVIDER_KEY = "pv" + "".join(random.Random(1).choices(string.ascii_letters + string.digits, k=46))
ADMIN_TOKEN = "at" + "".join(random.Random(2).choices(string.ascii_letters + string.digits, k=30))


def make_scanner() -> OutputScanner:
    """The scanner under evaluation: built-in tables plus the two exact values."""
    return OutputScanner(provider_key=PROVIDER_KEY, admin_token=ADMIN_TOKEN)


@dataclass(frozen=True)
class Case:
    """`kind` None means a hard negative: the text must yield no finding at all."""

    name: str
    text: str
    kind: str | None = None
    target: str = ""
    family: str = ""


_R = random.Random(20240611)
ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"


def rnd(n: int, alphabet: str = ALNUM) -> str:
    """Random string with at least one lower, upper and digit when the alphabet has them."""
    while True:
        s = "".join(_R.choice(alphabet) for _ in range(n))
        need = [
            c
            for c in (string.ascii_lowercase, string.ascii_uppercase, string.digits)
            if set(c) & set(alphabet)
        ]
        if all(set(s) & set(c) for c in need):
            return s


def digits(n: int) -> str:
    return "".join(_R.choice(string.digits) for _ in range(n))


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def jwt() -> str:
    head = b64url({"alg": "HS256", "typ": "JWT"})
    body = b64url({"sub": digits(8), "name": "Jane Roe", "iat": 1718000000 + _R.randint(0, 99999)})
    return f"{head}.{body}.{rnd(43, B64URL)}"


def pem(label: str, lines: int = 8) -> str:
    body = "\n".join(rnd(64, B64) for _ in range(lines)) + "\n" + rnd(24, B64) + "=="
    dashes = "-" * 5
    return f"{dashes}BEGIN {label}{dashes}\n{body}\n{dashes}END {label}{dashes}"


def card(prefix: str, length: int) -> str:
    while True:
        body = prefix + digits(length - len(prefix) - 1)
        for d in string.digits:
            if luhn_ok(body + d) and len(set(body + d)) >= 3:
                return body + d


def card_bad(prefix: str, length: int) -> str:
    good = card(prefix, length)
    return good[:-1] + str((int(good[-1]) + 1) % 10)


def iban(country: str) -> str:
    n = IBAN_LENGTHS[country]
    bban = digits(n - 4)
    rearranged = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in rearranged))
    check = 98 - num % 97
    return f"{country}{check:02d}{bban}"


def grouped(s: str, size: int = 4) -> str:
    return " ".join(s[i : i + size] for i in range(0, len(s), size))


def ssn() -> str:
    while True:
        area = _R.randint(1, 899)
        if area != 666:
            return f"{area:03d}-{_R.randint(1, 99):02d}-{_R.randint(1, 9999):04d}"


# --- secrets -------------------------------------------------------------------------------------

SK = "sk" + "-"


def _secret_values() -> list[tuple[str, str]]:
    """(kind, value) for every secret kind, several shapes each."""
    v: list[tuple[str, str]] = [
        ("secret:openai", SK + rnd(48)),
        ("secret:openai", SK + "proj-" + rnd(74, B64URL) + "T3Blbk" + "FJ" + rnd(74, B64URL)),
        ("secret:openai", SK + "svcacct-" + rnd(90, B64URL)),
        ("secret:anthropic", SK + "ant-api03-" + rnd(93, B64URL) + "AA"),
        ("secret:anthropic", SK + "ant-admin01-" + rnd(93, B64URL) + "AA"),
        ("secret:google", "AI" + "za" + rnd(35, B64URL)),
        ("secret:google", "GOC" + "SPX-" + rnd(28, B64URL)),
        ("secret:google", "ya" + "29." + rnd(120, B64URL)),
        ("secret:azure", rnd(3) + "8Q" + "~" + rnd(34, ALNUM + "_~-")),
        ("secret:aws", "AK" + "IA" + rnd(16, UPPER_DIGITS)),
        ("secret:aws", "AS" + "IA" + rnd(16, UPPER_DIGITS)),
        ("secret:github", "gh" + "p_" + rnd(36)),
        ("secret:github", "gh" + "s_" + rnd(36)),
        ("secret:github", "github_" + "pat_" + rnd(22) + "_" + rnd(59)),
        ("secret:gitlab", "gl" + "pat-" + rnd(20, B64URL)),
        ("secret:slack", "xo" + "xb-" + digits(12) + "-" + digits(13) + "-" + rnd(24)),
        (
            "secret:slack",
            "xo" + "xp-" + digits(12) + "-" + digits(12) + "-" + digits(13) + "-" + rnd(32).lower(),
        ),
        (
            "secret:slack_webhook",
            "https://hooks.slack.com/services/T"
            + rnd(8, UPPER_DIGITS)
            + "/B"
            + rnd(10, UPPER_DIGITS)
            + "/"
            + rnd(24),
        ),
        ("secret:discord_webhook", "https://discord.com/api/webhooks/" + digits(18) + "/" + rnd(68, B64URL)),
        ("secret:stripe", "sk" + "_live_" + rnd(24)),
        ("secret:stripe", "rk" + "_test_" + rnd(24)),
        ("secret:stripe", "wh" + "sec_" + rnd(32)),
        ("secret:huggingface", "hf" + "_" + rnd(34, string.ascii_letters)),
        ("secret:npm", "np" + "m_" + rnd(36)),
        ("secret:pypi", "py" + "pi-" + "AgEIcHlwaS5vcmc" + rnd(70, B64URL)),
        ("secret:jwt", jwt()),
        ("secret:jwt", jwt()),
        ("secret:sidecar", "sk" + "s_" + rnd(12) + "_" + rnd(43) + "_" + rnd(6)),
        ("secret:sidecar", SK + "sc-" + rnd(40)),
        ("secret:provider_key", PROVIDER_KEY),
        ("secret:admin_token", ADMIN_TOKEN),
    ]
    return v


_PROSE = (
    "Here is the credential you asked for: {s}. Store it in your secret manager and rotate it soon.",
    "I found this in the logs:\n\n    {s}\n\nIt looks like it was committed by mistake.",
    "- Step 3: paste `{s}` into the settings page and press Save.",
)
_CODE = (
    'client = Client(base_url="https://api.example.com", credential="{s}")\n',
    "const cfg = {{ endpoint: process.env.ENDPOINT, auth: '{s}' }};\n",
    "export SERVICE_CREDENTIAL={s}\n",
    '{{"service": "billing", "auth": {{"value": "{s}", "rotated": false}}}}',
)


def secret_cases() -> list[Case]:
    out: list[Case] = []
    for i, (kind, value) in enumerate(_secret_values()):
        tpl = _PROSE[i % len(_PROSE)]
        out.append(Case(f"{kind} prose {i}", tpl.format(s=value), kind, value))
        tpl = _CODE[i % len(_CODE)]
        out.append(Case(f"{kind} code {i}", tpl.format(s=value), kind, value))
    # keys that need their context
    aws_secret = rnd(40, B64)
    out.append(
        Case(
            "aws secret ini",
            "[default]\naws_access_key_id = AK"
            + "IA"
            + rnd(16, UPPER_DIGITS)
            + "\naws_secret_access_key = "
            + aws_secret
            + "\n",
            "secret:aws",
            aws_secret,
        )
    )
    aws_secret = rnd(40, B64)
    out.append(
        Case("aws secret env", f'export AWS_SECRET_ACCESS_KEY="{aws_secret}"', "secret:aws", aws_secret)
    )
    hexkey = "".join(_R.choice("0123456789abcdef") for _ in range(32))
    out.append(Case("azure openai key", f'AZURE_OPENAI_API_KEY="{hexkey}"', "secret:azure", hexkey))
    acct = rnd(86, B64) + "=="
    out.append(
        Case(
            "azure storage conn",
            "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
            + acct
            + ";EndpointSuffix=core.windows.net",
            "secret:azure",
            acct,
        )
    )
    sig = rnd(40, ALNUM) + "%3D"
    out.append(
        Case(
            "azure sas url",
            "https://acme.blob.core.windows.net/c/report.pdf?sv=2022-11-02&sp=r&sig=" + sig,
            "secret:azure",
            sig,
        )
    )
    for label in (
        "RSA PRIVATE KEY",
        "PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
    ):
        block = pem(label, 4 if "EC" in label else 10)
        out.append(
            Case(f"pem {label}", f"Here is the key file:\n\n```\n{block}\n```\n", "secret:private_key", block)
        )
    for scheme, host in (
        ("postgres", "db.internal:5432/app"),
        ("mysql", "10.0.0.5/shop"),
        ("mongodb+srv", "cluster0.ab1cd.mongodb.net/test"),
        ("https", "git.example.com/org/repo.git"),
        ("amqp", "rabbit:5672/"),
    ):
        pw = rnd(16, ALNUM + "!*")
        out.append(
            Case(
                f"url password {scheme}",
                f"DATABASE_URL={scheme}://svc_user:{pw}@{host}",
                "secret:url_password",
                pw,
            )
        )
    pw = rnd(20)
    out.append(
        Case(
            "url password redis no user",
            f'r = redis.from_url("redis://:{pw}@cache:6379/0")',
            "secret:url_password",
            pw,
        )
    )
    generic = [
        ('password = "{v}"', rnd(14, ALNUM + "!@#$%")),
        ("DB_PASSWORD={v}", rnd(18)),
        ('    "api_key": "{v}",', rnd(32)),
        ("apiKey: '{v}',", rnd(24)),
        ("client_secret: {v}", rnd(30, ALNUM + "-_~")),
        ("SECRET_KEY = '{v}'", rnd(50, ALNUM + "!@#%^&*(-_=+)")),
        ("  token: {v}", rnd(40)),
        ("Password: {v}", rnd(12, ALNUM + "!?")),
        ('<add key="Password" value="{v}" />', rnd(16)),
        ("Server=db;Database=app;User Id=sa;Password={v};", rnd(16, ALNUM + "!")),
        ("passphrase => '{v}'", rnd(20)),
        ('access_key := "{v}"', rnd(26)),
    ]
    for i, (tpl, value) in enumerate(generic):
        # the XML attribute form has no assignment to the name; the value follows `value=`
        if "add key" in tpl:
            continue
        out.append(Case(f"generic {i}", "Config:\n" + tpl.format(v=value) + "\n", "secret:generic", value))
    return out


def _pii_values() -> list[tuple[str, str]]:
    v: list[tuple[str, str]] = []
    for email in (
        "jane.doe@acme-corp.com",
        "j.smith+billing@sub.example.co.uk",
        "ops_team@globex.io",
        "first.last@university.edu",
        "x99@mail.example.org",
    ):
        v.append(("pii:email", email))
    for phone in (
        "+1 415 555 2671",
        "+44 20 7946 0958",
        "+49 30 12345678",
        "+33 6 12 34 56 78",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "+14155552671",
        "020 7946 0958",
        "030 12345678",
        "06 12 34 56 78",
        "+1 (212) 555-0199",
        "+91 98765 43210",
    ):
        v.append(("pii:phone", phone))
    v += [
        ("pii:credit_card", grouped(card("4", 16))),
        ("pii:credit_card", card("4", 16)),
        ("pii:credit_card", "-".join(grouped(card("51", 16)).split())),
        ("pii:credit_card", grouped(card("2221", 16))),
        ("pii:credit_card", (lambda c: f"{c[:4]} {c[4:10]} {c[10:]}")(card("37", 15))),
        ("pii:credit_card", card("34", 15)),
        ("pii:credit_card", grouped(card("6011", 16))),
        ("pii:credit_card", card("35", 16)),
    ]
    for country in ("DE", "GB", "FR", "NL", "ES", "IT", "CH"):
        value = iban(country)
        v.append(("pii:iban", grouped(value) if country in "DE FR IT" else value))
    for _ in range(6):
        v.append(("pii:ssn", ssn()))
    for ip in (
        "203.0.114.7",
        "8.8.4.4",
        "81.2.69.160",
        "185.199.108.153",
        "2606:4700:4700::1111",
        "2a00:1450:4001:82b::200e",
    ):
        v.append(("pii:ip", ip))
    return v


_PII_CONTEXTS = (
    "You can reach the account owner at {s} if anything is unclear.",
    'customer = {{"name": "Jane Roe", "contact": "{s}", "tier": "gold"}}',
    "| Jane Roe | {s} | active |",
    "Payment details on file: {s}.",
    "INSERT INTO customers (name, contact) VALUES ('Jane Roe', '{s}');",
)


def pii_cases() -> list[Case]:
    out: list[Case] = []
    for i, (kind, value) in enumerate(_pii_values()):
        tpl = _PII_CONTEXTS[i % len(_PII_CONTEXTS)]
        out.append(Case(f"{kind} {i}", tpl.format(s=value), kind, value))
        tpl = _PII_CONTEXTS[(i + 2) % len(_PII_CONTEXTS)]
        out.append(Case(f"{kind} {i}b", tpl.format(s=value), kind, value))
    return out


# --- hard negatives ------------------------------------------------------------------------------


def negative_cases() -> list[Case]:
    uuid = "3f2b8c1e-9a4d-4e6b-8f7a-1c2d3e4f5a6b"
    sha1 = "".join(_R.choice("0123456789abcdef") for _ in range(40))
    sha256 = "".join(_R.choice("0123456789abcdef") for _ in range(64))
    integrity = "sha512-" + rnd(86, B64) + "=="
    data_uri = "data:image/png;base64," + rnd(400, B64) + "="
    pub = pem("PUBLIC KEY", 6)
    cert = pem("CERTIFICATE", 12)
    dashes = "-" * 5
    neg = {
        "secret": [
            f"Set OPENAI_API_KEY to your key (it looks like `{SK}...`).",
            f"Replace {SK}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx with your own key.",
            f'client = OpenAI(api_key="{SK}your-api-key-here-0000000000000000")',
            "export OPENAI_API_KEY=YOUR_API_KEY",
            "aws_access_key_id = AK" + "IAIOSFODNN7EXAMPLE",
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",
            "token = ghp_" + "x" * 36,
            'api_key = os.environ["OPENAI_API_KEY"]',
            "password = getpass.getpass()",
            "password: Optional[str] = None",
            "token: CancellationToken,",
            '"password": "********",',
            "DATABASE_URL=postgres://user:password@localhost:5432/app",
            "git clone https://${GITHUB_USER}:${GITHUB_TOKEN}@github.com/org/repo.git",
            f"request id {uuid} failed; retry later",
            f"fixed in commit {sha1} on main",
            f"sha256: {sha256}",
            f'"integrity": "{integrity}",',
            f'<img src="{data_uri}" alt="logo">',
            "We follow the risk-management-framework-for-enterprise-ai guidance.",
            "Use a task-scheduler-with-exponential-backoff-and-jitter for this.",
            f"Public key:\n{pub}\n",
            f"Certificate:\n{cert}\n",
            f"{dashes}BEGIN RSA PRIVATE KEY{dashes}\n...\n{dashes}END RSA PRIVATE KEY{dashes}",
            "Pass the JWT in the header: Authorization: Bearer eyJ...",
            "The publishable key (pk_" + "live_" + rnd(24) + ") is safe to ship in the browser.",
            "STRIPE_SECRET_KEY=sk_" + "test_xxxxxxxxxxxxxxxxxxxxxxxx",
            "HF_TOKEN=hf_" + "x" * 34,
            "thisIsAVeryLongIdentifierNameUsedForTesting = computeSomething(42)",
            "See https://example.com:8443/path/to/page?query=1&sort=desc for details.",
            "git remote add origin git@github.com:acme/payments-service.git",
            "ssh://git@gitlab.example.com:2222/acme/repo.git",
            "token_type: bearer",
            "secret_name = 'prod-db-credentials'",
            "password_reset_url = '/accounts/password/reset/'",
            "The tokens per second metric: 42.5 tokens/s on average.",
            "api_key = settings.OPENAI_API_KEY",
            "AZURE_OPENAI_API_KEY=<your-azure-openai-key>",
            "docker pull ghcr.io/acme/api@sha256:" + sha256,
            "const password = req.body.password;",
            "key: value",
            "apiKey: process.env.API_KEY,",
            "auth_token = None",
            "PASSWORD=changeme",
            "pypi-AgEIcHlwaS5vcmc...",
        ],
        "pii": [
            "npm install lodash@4.17.21 @types/node",
            "Use icon@2x.png for retina screens.",
            "@app.route('/users/<int:user_id>')",
            "@media screen and (max-width: 600px) { body { margin: 0; } }",
            "Upgrade from 1.2.3 to 2.10.4 before 2024-01-15.",
            "The job ran at 12:30:45 and finished at 13:02:11.",
            "created: 1718000000, updated: 1718003600",
            "Card: " + grouped(card_bad("4", 16)),
            "Order number " + card_bad("5", 16) + " has shipped.",
            "Tracking ID 7" + digits(15),
            "IBAN DE" + "00 " + grouped(digits(18)),
            "Account GB" + "82 WEST 1234 5698 7654 3",
            "SSN 000-12-3456 is invalid.",
            "666-12-3456 is never issued",
            "912-34-5678 is an ITIN-style number, not an SSN",
            "123-00-4567 has a zero group",
            "123-45-0000 has a zero serial",
            "ISBN 978-3-16-148410-0",
            "Population: 1,234,567 (2020 census)",
            "pi is 3.14159265358979",
            "Listen on 0.0.0.0:8080 or 127.0.0.1:8080",
            "netmask 255.255.255.0",
            "docs use 192.0.2.1 and 198.51.100.23 and 203.0.113.9",
            "the VPC uses 10.12.0.31, 172.16.254.1 and 192.168.1.20; CGNAT 100.64.0.1",
            "SSDP multicast goes to 239.255.255.250, link-local is 169.254.10.1",
            "OID 1.3.6.1.4.1.311 identifies Microsoft",
            "IPv6 loopback is ::1 and the doc prefix is 2001:db8::1",
            "link-local fe80::1 is not routable",
            "std::vector<int> v; std::map<std::string, int> m;",
            "MAC 00:1A:2B:3C:4D:5E",
            "CVE-2024-12345 affects versions 3.0-3.4",
            "ports 8000-8999 are reserved",
            "x = 3 * (4 + 5) - 2",
            "Released 10/12/2024, patched 11/02/2024",
            "The range 2024-2025 saw 12.5% growth",
            "See RFC 9106 section 4 and RFC 7519.",
            "version v2.7.18.1 of the firmware",
            "Dial extension 4567 for support.",
            "Matrix product: y = A@x.T + b",
            "user@localhost is not an address outside this machine",
        ],
    }
    out: list[Case] = []
    for family, texts in neg.items():
        for i, t in enumerate(texts):
            out.append(Case(f"negative {family} {i}", t, None, family=family))
    return out


SEED = 20240611


def all_cases(seed: int = SEED) -> list[Case]:
    """Every case, generated afresh from `seed` (the same seed gives the same strings)."""
    _R.seed(seed)
    return secret_cases() + pii_cases() + negative_cases()


def hit(case: Case, findings: list) -> bool:  # type: ignore[type-arg]
    """A positive is caught when a finding of its kind covers its target."""
    start = case.text.find(case.target)
    end = start + len(case.target)
    return any(f.kind == case.kind and f.start <= start and f.end >= end for f in findings)


def evaluate(seed: int = SEED) -> tuple[dict[str, list[int]], dict[str, list[int]], list[str]]:
    """Per-kind (caught, total), per-family negatives (clean, total), and failure descriptions."""
    scanner = make_scanner()
    recall: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    negatives: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failures: list[str] = []
    for case in all_cases(seed):
        findings = scanner.scan(case.text)
        if case.kind is None:
            negatives[case.family][1] += 1
            if findings:
                failures.append(f"FP {case.name}: {[(f.kind, case.text[f.start : f.end]) for f in findings]}")
            else:
                negatives[case.family][0] += 1
        else:
            recall[case.kind][1] += 1
            if hit(case, findings):
                recall[case.kind][0] += 1
            else:
                failures.append(
                    f"miss {case.name}: {[(f.kind, case.text[f.start : f.end]) for f in findings]}"
                )
    return dict(recall), dict(negatives), failures


def report() -> str:
    """The markdown table for docs/output-eval.md."""
    recall, negatives, failures = evaluate()
    lines = ["| kind | caught / cases | recall |", "|---|---|---|"]
    tp = n = 0
    for kind in sorted(recall):
        c, t = recall[kind]
        tp, n = tp + c, n + t
        lines.append(f"| `{kind}` | {c} / {t} | {c / t:.2f} |")
    lines.append(f"| **all positives** | {tp} / {n} | {tp / n:.3f} |")
    lines += ["", "| hard negatives | clean / cases | false positives |", "|---|---|---|"]
    for fam in sorted(negatives):
        c, t = negatives[fam]
        lines.append(f"| {fam} | {c} / {t} | {t - c} |")
    total = n + sum(t for _, t in negatives.values())
    lines += ["", f"{total} cases in all."]
    if failures:
        lines += ["", "Misses and false positives:", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines)


def write_doc(path: Path) -> None:
    text = path.read_text()
    start, end = "<!-- eval:start -->", "<!-- eval:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{report()}\n{end}{tail}")


if __name__ == "__main__":
    print(report())
    if "--write" in sys.argv:
        write_doc(Path(__file__).resolve().parents[3] / "docs" / "output-eval.md")
