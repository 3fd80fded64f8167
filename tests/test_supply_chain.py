"""SC-1 and AU-4 (static part): the aiohttp we run is patched and uses its C parser, bandit finds
no medium/high issue in the package, and no secret is compared with `==`."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import aiohttp.http_parser
import pytest

ROOT = Path(__file__).resolve().parent.parent
# The latest aiohttp security release named in TEST-PLAN SC-1 (GHSA-mfx4-hv73-q22v, GHSA-cq5v-8q36-5273).
AIOHTTP_FLOOR = (3, 14, 3)


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string: "3.14.5" -> (3, 14, 5), "3.15.0rc1" -> (3, 15, 0)."""
    numbers: list[int] = []
    for part in version.split(".")[:3]:
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


@pytest.mark.parametrize(("version", "expected"), [
    ("3.14.5", (3, 14, 5)), ("3.15.0rc1", (3, 15, 0)), ("4.0", (4, 0)), ("3.14.3.post1", (3, 14, 3)),
])
def test_release_reads_versions(version: str, expected: tuple[int, ...]) -> None:
    """The version reader used by the floor check reads release numbers as pip orders them."""
    assert release(version) == expected


def test_aiohttp_is_at_or_above_the_security_floor() -> None:
    """The installed aiohttp carries the request-smuggling and parser fixes up to 3.14.3."""
    installed = importlib.metadata.version("aiohttp")
    assert release(installed) >= AIOHTTP_FLOOR, f"aiohttp {installed} < 3.14.3: upgrade it"


def test_aiohttp_uses_its_c_http_parser() -> None:
    """The C (llhttp) parser is active for requests and responses, not the pure-Python fallback
    (AIOHTTP_NO_EXTENSIONS or a build without wheels silently switches it off)."""
    assert aiohttp.http_parser.HttpRequestParser is aiohttp.http_parser.HttpRequestParserC
    assert aiohttp.http_parser.HttpResponseParser is aiohttp.http_parser.HttpResponseParserC


def test_bandit_finds_no_medium_or_high_issue() -> None:
    """bandit reports no medium- or high-severity finding anywhere in sidecar/."""
    result = subprocess.run(
        [sys.executable, "-m", "bandit", "-r", "sidecar", "-ll", "-q", "-f", "txt"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


SECRET_COMPARE = re.compile(
    r"\b\w*(secret|token|digest|password|api_key|key_hash)\w*\b\s*[!=]=|[!=]=\s*\w*(secret|token|digest|password)",
    re.IGNORECASE)


def test_no_secret_is_compared_with_equals() -> None:
    """Secrets, tokens and digests are compared in constant time (hmac.compare_digest), never
    with == or !=, so response timing says nothing about how much of a guess was right."""
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
            for path in sorted((ROOT / "sidecar").rglob("*.py"))
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if SECRET_COMPARE.search(line.split("#")[0])]
    assert not hits, "\n".join(hits)
