"""Evaluation of the output guards (secrets and PII) on public material, per kind; prints Markdown.

Two groups, decided before any miss was looked at (see docs/output-eval.md, "Evaluation on public
material"):

- FROZEN, never read while tuning: Nosey Parker's rule examples (secrets), Presidio's recognizer
  tests (PII), and clean documents read from this machine's own files (Python standard library,
  /etc configuration, /usr/share/doc prose, /var/log and Debian changelogs). Their misses and
  false positives are never printed: `--show` refuses them.
- TUNING, read freely: detect-secrets' plugin tests (with their negatives), the phone numbers
  `phonenumbers` ships as examples for every region, the generated cases of
  tests/guards/cases/output_cases.py, and clean documents from this repository's own code, docs
  and deployment files.

Secrets are scored per document (a document with a secret is caught when any `secret:` finding
lies in it; a clean document is flagged when any does); PII per span (a finding of the labelled
kind that overlaps a labelled span is a true positive, one that overlaps none a false positive).

    .venv/bin/python tools/eval_output.py [--group frozen|tuning|all] [--show] [--json FILE]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import ipaddress
import json
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers as pn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.guards.pii import NATIONAL_REGIONS  # noqa: E402
from sidecar.guards.redact import OutputScanner  # noqa: E402
from sidecar.model import Finding  # noqa: E402

DATA = ROOT / "tools" / "data" / "output_eval"
FROZEN = "frozen"
TUNING = "tuning"
FROZEN_SOURCES = frozenset({"noseyparker", "presidio", "machine-clean"})
"""Sources whose rows and misses are never shown (decided before the first evaluation run)."""

CHUNK = 2000
"""Clean files are cut into documents of about this many characters (a long reply)."""
PER_CATEGORY = 300
"""At most this many clean documents per category and group, picked by a hash of path and offset."""


@dataclass
class Doc:
    source: str
    group: str
    kind: str  # secrets: the labelled kind ("" for clean); PII: the PII kind
    text: str
    label: bool = True  # secrets: holds a secret
    spans: list[tuple[int, int]] = field(default_factory=list)  # PII: expected spans
    category: str = ""  # clean documents: code, config, logs, prose
    name: str = ""


def _jsonl(name: str) -> Iterator[dict[str, object]]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


# --- secrets --------------------------------------------------------------------------------


def frozen_secret_docs() -> list[Doc]:
    return [
        Doc(str(r["source"]), FROZEN, str(r["kind"]), str(r["text"]), name=str(r["file"]))
        for r in _jsonl("frozen_secrets.jsonl.gz")
    ]


def tuning_secret_docs() -> list[Doc]:
    docs = [
        Doc(str(r["source"]), TUNING, str(r["kind"]), str(r["text"]), bool(r["label"]), name=str(r["file"]))
        for r in _jsonl("tuning_secrets.jsonl.gz")
    ]
    from tests.guards.cases import output_cases as oc

    for case in oc.all_cases():
        if case.kind is None:
            if case.family == "secret":
                docs.append(Doc("generated", TUNING, "negative", case.text, False, name=case.name))
        elif case.kind.startswith("secret:") and case.kind not in (
            "secret:provider_key",
            "secret:admin_token",
        ):
            docs.append(Doc("generated", TUNING, case.kind.split(":", 1)[1], case.text, name=case.name))
    return docs


_WORDS = ("river", "Falcon", "maple", "Orbit", "tiger", "Copper", "velvet", "Nimbus", "quartz", "Harbor")
_PASSWORD_FORMS = (
    ("env", "DB_PASSWORD={pw}\nDB_USER=app\n"),
    ("env", "export PGPASSWORD={pw}\npsql -h db.internal -U report\n"),
    ("env", 'export PGPASSWORD="{pw}"\n'),
    ("yaml", "database:\n  user: app\n  password: {pw}\n"),
    ("yaml", "environment:\n  MYSQL_ROOT_PASSWORD: '{pw}'\n"),
    ("json", '{{"username": "svc-backup", "password": "{pw}", "host": "10.0.4.2"}}'),
    ("python", 'conn = psycopg2.connect(host="db", user="app", password="{pw}")\n'),
    ("python", "SMTP_PASS = '{pw}'\n"),
    ("java", 'String dbPassword = "{pw}";\n'),
    ("properties", "spring.datasource.password={pw}\nspring.datasource.username=app\n"),
    ("ini", "[client]\nuser = backup\npassword = {pw}\n"),
    ("php", "$db_pass = '{pw}';\n"),
    ("ruby", "  password: '{pw}',\n"),
    ("ado", "Server=tcp:sql01,1433;Database=Sales;User ID=sales_app;Password={pw};Encrypt=True;"),
    ("jdbc", "jdbc:mysql://db01:3306/shop?user=shop&password={pw}&useSSL=true"),
    ("url", "DATABASE_URL=postgres://app:{pw}@db01.internal:5432/app"),
    ("go", 'cfg.Password = "{pw}"\n'),
    ("toml", 'password = "{pw}"\n'),
    ("prose", "Your new password: {pw}\nPlease change it after the first login.\n"),
)
_PASSWORD_NEGATIVE_FORMS = (
    'password = os.environ["DB_PASSWORD"]\n',
    "password: ${{DB_PASSWORD}}\n",
    "export PGPASSWORD=$(cat /run/secrets/pg)\n",
    'if not password:\n    raise ValueError("password is required")\n',
    "password = getpass.getpass()\n",
    "def login(self, username: str, password: str) -> None:\n",
    "  password_hint: 'At least 12 characters'\n",
    '"password": "<your-password>"\n',
    "DB_PASSWORD=changeme\n",
    "password = None\n",
    "password: ********\n",
    "Use a password manager; the password field must not be empty.\n",
    "self.password = password\n",
    "password_length = 16\n",
    "PASSWORD_FILE=/run/secrets/db_password\n",
)


def generated_password_docs(seed: int = 7) -> list[Doc]:
    """Password assignments in the usual syntaxes with three kinds of values (random, a word and
    digits, a passphrase-like word pair), and the code around passwords that is not one."""
    import random

    rnd = random.Random(seed)  # noqa: S311 - test data, not keys
    alphabet = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#%*+-_"
    docs: list[Doc] = []
    for i, (form, tpl) in enumerate(_PASSWORD_FORMS):
        for style in range(3):
            if style == 0:
                pw = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(10, 20)))
            elif style == 1:
                pw = rnd.choice(_WORDS) + str(rnd.randint(10, 9999)) + rnd.choice("!#%*")
            else:
                pw = (
                    rnd.choice(_WORDS).lower()
                    + rnd.choice("-_.")
                    + rnd.choice(_WORDS)
                    + str(rnd.randint(1, 99))
                )
            if form in ("ado", "jdbc", "url", "env", "properties", "ini", "prose"):
                pw = pw.replace("#", "x").replace("%", "y")
            docs.append(
                Doc("generated-passwords", TUNING, f"password/{form}", tpl.format(pw=pw), name=f"{i}.{style}")
            )
    for i, text in enumerate(_PASSWORD_NEGATIVE_FORMS):
        docs.append(Doc("generated-passwords", TUNING, "negative", text.format(), False, name=f"neg{i}"))
    return docs


# --- clean documents ------------------------------------------------------------------------

_MACHINE: dict[str, Callable[[], Iterable[Path]]] = {
    "code": lambda: sorted(Path("/usr/lib/python3.11").glob("*.py")),
    "config": lambda: sorted(
        p
        for pat in ("*.conf", "*.cfg", "*.ini", "*.yaml", "*.yml", "*.toml")
        for p in Path("/etc").rglob(pat)
        if "ssl" not in p.parts and "private" not in p.parts
    ),
    "prose": lambda: sorted(
        p
        for pat in ("README*", "*.md", "*.md.gz", "*.txt", "*.txt.gz", "NEWS*")
        for p in Path("/usr/share/doc").rglob(pat)
    ),
    "logs": lambda: [
        *sorted(Path("/var/log").glob("*.log")),
        *sorted(Path("/var/log/apt").glob("*.log")),
        *sorted(Path("/usr/share/doc").rglob("changelog.Debian.gz")),
    ],
}
_REPO: dict[str, Callable[[], Iterable[Path]]] = {
    "code": lambda: sorted((ROOT / "sidecar").rglob("*.py")),
    "config": lambda: sorted(
        p
        for p in [
            *(ROOT / "deploy").rglob("*"),
            ROOT / "pyproject.toml",
            ROOT / "Makefile",
            ROOT / "Dockerfile",
        ]
        if p.is_file() and p.suffix not in (".png", ".gz")
    ),
    "prose": lambda: sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"]),
}


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return ""


def _chunks(text: str) -> Iterator[tuple[int, str]]:
    """Pieces of about `CHUNK` characters, cut at line ends."""
    at = 0
    while at < len(text):
        end = text.find("\n", at + CHUNK)
        end = len(text) if end == -1 else end + 1
        piece = text[at:end]
        if piece.strip():
            yield at, piece
        at = end


def clean_docs(group: str) -> list[Doc]:
    table = _MACHINE if group == FROZEN else _REPO
    source = "machine-clean" if group == FROZEN else "repo-clean"
    docs: list[Doc] = []
    for category, files in table.items():
        found: list[tuple[str, Doc]] = []
        for path in files():
            for at, piece in _chunks(_read(path)):
                name = f"{path}@{at}"
                key = hashlib.sha256(name.encode()).hexdigest()
                found.append((key, Doc(source, group, "", piece, False, category=category, name=name)))
        found.sort(key=lambda kv: kv[0])
        docs.extend(d for _, d in found[:PER_CATEGORY])
    return docs


# --- PII ------------------------------------------------------------------------------------

_IP_CORE = re.compile(r"[0-9A-Fa-f:.]+")


def _public_ip(text: str) -> bool:
    """Whether the address in `text` is public: this project leaves private, loopback, link-local,
    documentation and unspecified ranges alone, so Presidio's IP labels are kept only for those."""
    m = _IP_CORE.search(text.strip("[]'()"))
    if m is None:
        return False
    value = m.group(0).rstrip(".")
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return bool(addr.is_global) and not addr.is_multicast


def frozen_pii_docs() -> list[Doc]:
    docs = []
    for r in _jsonl("frozen_pii.jsonl.gz"):
        text = str(r["text"])
        spans = [(int(s), int(e)) for s, e in r["spans"]]  # type: ignore[attr-defined]
        if r["kind"] == "ip":
            spans = [(s, e) for s, e in spans if _public_ip(text[s:e])]
        docs.append(Doc(str(r["source"]), FROZEN, str(r["kind"]), text, spans=spans, name=str(r["file"])))
    return docs


_PHONE_TEMPLATES = (
    "You can reach the front desk on {} any weekday.",
    "Call me at {}.",
    "Tel: {}",
    '{{"name": "A. Client", "phone": "{}"}}',
    "- support hotline: {} (24/7)",
)


def tuning_pii_docs() -> list[Doc]:
    """Example numbers `phonenumbers` ships for every region and line type, written the three
    usual ways, in a few sentence frames; plus the generated PII cases."""
    docs: list[Doc] = []
    fmts = (pn.PhoneNumberFormat.INTERNATIONAL, pn.PhoneNumberFormat.NATIONAL, pn.PhoneNumberFormat.E164)
    i = 0
    for region in sorted(pn.SUPPORTED_REGIONS):
        for ntype in (pn.PhoneNumberType.MOBILE, pn.PhoneNumberType.FIXED_LINE):
            num = pn.example_number_for_type(region, ntype)
            if num is None:
                continue
            for fmt in fmts:
                value = pn.format_number(num, fmt)
                # a national format is a phone number only where its region is configured
                source = (
                    "phonenumbers"
                    if fmt != pn.PhoneNumberFormat.NATIONAL or region in NATIONAL_REGIONS
                    else "phonenumbers-national-unconfigured"
                )
                tpl = _PHONE_TEMPLATES[i % len(_PHONE_TEMPLATES)]
                i += 1
                text = tpl.format(value)
                s = text.index(value)
                docs.append(Doc(source, TUNING, "phone", text, spans=[(s, s + len(value))], name=region))
    from tests.guards.cases import output_cases as oc

    for case in oc.all_cases():
        if case.kind is not None and case.kind.startswith("pii:"):
            s = case.text.find(case.target)
            docs.append(
                Doc(
                    "generated",
                    TUNING,
                    case.kind[4:],
                    case.text,
                    spans=[(s, s + len(case.target))],
                    name=case.name,
                )
            )
        elif case.kind is None and case.family == "pii":
            docs.append(Doc("generated", TUNING, "negative", case.text, spans=[], name=case.name))
    return docs


# --- scoring --------------------------------------------------------------------------------


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "–"


def score_secrets(scan: Callable[[str], list[Finding]], docs: list[Doc], show: bool) -> list[str]:
    by_kind: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    neg: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    fp_kinds: dict[str, int] = defaultdict(int)
    shown: list[str] = []
    tp = fp = 0
    for d in docs:
        found = [f for f in scan(d.text) if f.kind.startswith("secret:")]
        if d.label:
            row = by_kind[(d.source, d.kind)]
            row[1] += 1
            if found:
                row[0] += 1
                tp += 1
            elif show and d.source not in FROZEN_SOURCES:
                shown.append(f"miss {d.source}/{d.kind} {d.name}: {d.text[:200]!r}")
        else:
            row = neg[(d.source, d.category or d.kind)]
            row[1] += 1
            if found:
                row[0] += 1
                fp += 1
                for f in found:
                    fp_kinds[f.kind] += 1
                if show and d.source not in FROZEN_SOURCES:
                    shown.append(
                        f"FP {d.source}/{d.category or d.kind} {d.name}: "
                        + repr([(f.kind, d.text[max(0, f.start - 30) : f.end + 10]) for f in found])
                    )
    lines = ["| source | kind | caught / documents | recall |", "|---|---|---|---|"]
    caught = total = 0
    for (src, kind), (c, t) in sorted(by_kind.items()):
        caught, total = caught + c, total + t
        lines.append(f"| {src} | {kind} | {c} / {t} | {_ratio(c, t)} |")
    lines.append(f"| **all** | | **{caught} / {total}** | **{_ratio(caught, total)}** |")
    lines += ["", "| source | clean documents | flagged / documents | rate |", "|---|---|---|---|"]
    flagged = clean = 0
    for (src, cat), (c, t) in sorted(neg.items()):
        flagged, clean = flagged + c, clean + t
        lines.append(f"| {src} | {cat} | {c} / {t} | {c / t:.1%} |")
    if clean:
        lines.append(f"| **all** | | **{flagged} / {clean}** | **{flagged / clean:.1%}** |")
    lines.append("")
    lines.append(
        f"Document precision (documents with a secret among all flagged): {_ratio(tp, tp + fp)}"
        + (f"; kinds on clean documents: {dict(sorted(fp_kinds.items()))}" if fp_kinds else "")
    )
    return lines + (["", *shown] if shown else [])


def score_pii(scan: Callable[[str], list[Finding]], docs: list[Doc], show: bool) -> list[str]:
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])  # tp, fp, fn
    shown: list[str] = []
    for d in docs:
        found = [f for f in scan(d.text) if f.kind.startswith("pii:")]
        kind = d.kind
        if kind == "negative":
            for f in found:
                counts[(d.source, f.kind[4:])][1] += 1
                if show:
                    shown.append(f"FP {d.source} {d.name}: {f.kind} {d.text[f.start : f.end]!r}")
            continue
        mine = [f for f in found if f.kind == f"pii:{kind}"]
        row = counts[(d.source, kind)]
        for s, e in d.spans:
            if any(f.start < e and s < f.end for f in mine):
                row[0] += 1
            else:
                row[2] += 1
                if show and d.source not in FROZEN_SOURCES:
                    shown.append(
                        f"miss {d.source}/{kind} {d.name}: {d.text!r} [{s}:{e}] -> "
                        + repr([(f.kind, f.start, f.end) for f in found])
                    )
        for f in mine:
            if not any(f.start < e and s < f.end for s, e in d.spans):
                row[1] += 1
                if show and d.source not in FROZEN_SOURCES:
                    shown.append(
                        f"FP {d.source}/{kind} {d.name}: {d.text[f.start : f.end]!r} in {d.text[:120]!r}"
                    )
    lines = [
        "| source | kind | TP | FP | FN | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    T = F = N = 0
    for (src, kind), (tp, fp, fn) in sorted(counts.items()):
        T, F, N = T + tp, F + fp, N + fn
        p, r = tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        lines.append(f"| {src} | {kind} | {tp} | {fp} | {fn} | {p:.2f} | {r:.2f} | {f1:.2f} |")
    p, r = T / (T + F) if T + F else 1.0, T / (T + N) if T + N else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    lines.append(f"| **all** | | {T} | {F} | {N} | **{p:.2f}** | **{r:.2f}** | **{f1:.2f}** |")
    return lines + (["", *shown] if shown else [])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=(FROZEN, TUNING, "all"), default="all")
    ap.add_argument(
        "--show", action="store_true", help="print misses and false positives (tuning group only)"
    )
    args = ap.parse_args(argv)
    scanner = OutputScanner()
    groups = (FROZEN, TUNING) if args.group == "all" else (args.group,)
    for group in groups:
        t0 = time.perf_counter()
        if group == FROZEN:
            secrets = frozen_secret_docs() + clean_docs(FROZEN)
            pii = frozen_pii_docs()
        else:
            secrets = tuning_secret_docs() + generated_password_docs() + clean_docs(TUNING)
            pii = tuning_pii_docs()
        show = args.show and group == TUNING
        print(f"## {group} group\n\n### Secrets (per document)\n")
        print("\n".join(score_secrets(scanner.scan, secrets, show)))
        print("\n### PII (per span)\n")
        print("\n".join(score_pii(scanner.scan, pii, show)))
        print(
            f"\n({len(secrets)} secret/clean documents, {len(pii)} PII documents, "
            f"{time.perf_counter() - t0:.1f} s)\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
