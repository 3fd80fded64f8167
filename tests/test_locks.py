"""The lock files: every pin hash-checked, the same version wherever two locks share a package,
the production lock without the embedded store or dev tools, and each install path reading the
lock it should (make run: runtime only)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {name: ROOT / "requirements" / f"{name}.lock" for name in ("base", "run", "dev", "build")}
DEV_TOOLS = {"pytest", "mypy", "ruff", "hypothesis", "schemathesis", "openai", "bandit", "atheris"}
EMBEDDED_STORE = {"fakeredis", "lupa"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of --hash options) for every requirement of a lock file."""
    found: dict[str, tuple[str, int]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)", line)
        if match:
            current = canonical(match.group(1))
            found[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
        elif line.strip() and not line.startswith(("#", " ")):
            pytest.fail(f"{lock.name}: unexpected line {line!r}")
    return found


def declared(*extras: str) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return {canonical(re.split(r"[\[<>=!~;\s]", spec, maxsplit=1)[0]) for spec in specs}


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_every_pin_is_exact_and_hash_checked(name: str) -> None:
    """pip's --require-hashes mode accepts the file: every requirement pinned with ==, each with
    at least one sha256."""
    found = pins(LOCKS[name])
    assert found
    assert [n for n, (_, hashes) in found.items() if hashes == 0] == []


def test_locks_agree_on_every_shared_package() -> None:
    """A package in two locks has one version: `make run`, CI and the image run the same code."""
    versions: dict[str, set[str]] = {}
    for lock in LOCKS.values():
        for package, (version, _) in pins(lock).items():
            versions.setdefault(package, set()).add(version)
    assert {p: v for p, v in versions.items() if len(v) > 1} == {}


def test_each_lock_holds_what_its_install_needs_and_no_more() -> None:
    """base: the runtime dependencies, without the embedded store or dev tools (the image);
    run: those plus the embedded store (make run); dev: everything the dev extra names."""
    base, run, dev, build = (set(pins(LOCKS[n])) for n in ("base", "run", "dev", "build"))
    assert declared() <= base
    assert not base & (EMBEDDED_STORE | DEV_TOOLS)
    assert declared("memory") <= run and EMBEDDED_STORE <= run and not run & DEV_TOOLS
    assert declared("dev") <= dev and "hatchling" in dev
    assert "hatchling" in build and not run & build  # installed together by make run


def recipe(makefile: str, target: str) -> str:
    match = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert match, target
    return match.group(0)


def test_make_run_installs_runtime_only_and_make_test_the_dev_lock() -> None:
    """`make run` depends on its own stamp, which installs run.lock and build.lock with hashes;
    `make test` and `make lint` (and so .ci/run) depend on the dev stamp, which installs
    dev.lock."""
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: \$\(RUN_STAMP\)$", makefile, re.M)
    assert re.search(r"^test: \$\(STAMP\)$", makefile, re.M)
    assert re.search(r"^lint: \$\(STAMP\)$", makefile, re.M)
    run_install = recipe(makefile, "$(RUN_STAMP)")
    assert "--require-hashes" in run_install and "requirements/run.lock" in run_install
    assert "dev" not in run_install
    dev_install = recipe(makefile, "$(STAMP)")
    assert "--require-hashes" in dev_install and "requirements/dev.lock" in dev_install
    assert "make lint" in (ROOT / ".ci" / "run").read_text()


def test_the_image_installs_the_production_lock_with_hashes() -> None:
    """The Dockerfile's builder fetches base.lock with --require-hashes and builds with the
    locked hatchling; the runtime stage installs those wheels by the same lock."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements/base.lock" in dockerfile and "requirements/build.lock" in dockerfile
    assert dockerfile.count("--require-hashes") >= 3
    assert "--no-build-isolation" in dockerfile
