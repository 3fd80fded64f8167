"""Every reference in the README and docs resolves inside the repository: Markdown links,
file paths in backticks (and the test functions they name), and nothing that points at the
build machine or at notes that do not ship."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = ("sidecar/", "tests/", "docs/", "deploy/", "bench/", "tools/", "requirements/", ".ci/")
TOP_FILES = ("Makefile", "Dockerfile", "pyproject.toml", "LICENSE", "README.md", ".dockerignore")
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
# Planning notes kept beside the repository, and paths of the machine the docs were written on.
FORBIDDEN = re.compile(r"\.\./shared|DESIGN\.md|TEST-PLAN|(?<![\w.])/(?:work|home)/"
                       r"|\b(?:AU|IN|RL|RD|UP|CD|LK|LLM|SD|SC|TI)-\d+\b")


def documents() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    return sorted(ROOT / name for name in listed if not name.startswith("tests/"))


def broken_references(doc: Path) -> list[str]:
    """Every reference in `doc` that does not resolve, as 'line N: reference'."""
    broken = []
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            if not (doc.parent / target.partition("#")[0]).exists():
                broken.append(f"line {number}: ({target})")
        current: Path | None = None
        for token in CODE.findall(line):
            path, _, function = token.partition("::")
            if path.startswith(TOP_LEVEL) or path in TOP_FILES:
                if " " in path or any(c in path for c in "<>{}…$"):
                    continue  # a command line or a pattern, not a path
                matches = sorted(ROOT.glob(path.rstrip("/"))) if "*" in path else \
                    [ROOT / path] if (ROOT / path).exists() else []
                if not matches:
                    broken.append(f"line {number}: `{token}`")
                    continue
                current = matches[0]
            elif path or not function or current is None:
                continue  # `::name` continues the file named before it on the line
            if function and current is not None and current.is_file():
                name = function.split("[")[0]
                if not re.search(rf"^\s*(async )?def {re.escape(name)}\b", current.read_text(), re.M):
                    broken.append(f"line {number}: `{token}` (no such function in {current.name})")
    return broken


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_reference_resolves_inside_the_repository(doc: Path) -> None:
    """Links and backticked paths name files that exist (tests named with `::` exist in them)."""
    assert broken_references(doc) == []


@pytest.mark.parametrize("doc", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_points_outside_the_repository(doc: Path) -> None:
    """No design-note or test-plan references and no paths of the build machine."""
    hits = [f"line {n}: {m.group(0)}" for n, line in enumerate(doc.read_text().splitlines(), 1)
            for m in FORBIDDEN.finditer(line)]
    assert hits == []


def test_the_checker_catches_what_it_should(tmp_path: Path) -> None:
    """A missing file, a renamed test and a link to nowhere are each reported."""
    doc = tmp_path / "doc.md"
    doc.write_text("see [gone](nowhere.md) and `sidecar/no_such_module.py`\n"
                   "`tests/test_docs_links.py::test_renamed_away`, "
                   "`::test_the_checker_catches_what_it_should`\n")
    assert broken_references(doc) == [
        "line 1: (nowhere.md)", "line 1: `sidecar/no_such_module.py`",
        "line 2: `tests/test_docs_links.py::test_renamed_away` (no such function in "
        "test_docs_links.py)"]
    assert FORBIDDEN.search("see ../shared/DESIGN.md") and FORBIDDEN.search("(TEST-PLAN RL-4)")
    assert FORBIDDEN.search("in `/work/shared/data`") and not FORBIDDEN.search("SHA-256, UTF-8")
