"""The Dockerfile, checked statically (no container engine here): multi-stage, non-root,
no build tools in the runtime stage, a HEALTHCHECK that works without curl."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import pytest

from tests.conftest import free_port
from tests.deploy.common import DOCKERFILE, ROOT

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|make|build-essential|clang|cargo|rustc|git|curl|wget|"
                         r"python3-dev|libc6-dev|apt-get install)\b")


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs and the stages, with line continuations joined and comments dropped."""
    logical = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), match.group(1))
            stages.append(Stage(match.group(2) or str(len(stages)), base))
        elif not stages and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


def test_multi_stage_on_python_311_slim(stages: list[Stage]) -> None:
    """A builder stage makes wheels; the runtime stage starts again from python:3.11-slim."""
    assert [s.name for s in stages] == ["builder", "runtime"]
    assert all(s.base.startswith("python:3.11-slim") for s in stages)
    assert any("pip wheel" in run and "/wheels" in run for run in stages[0].all("RUN"))


def test_runtime_installs_only_the_wheels_and_no_build_tools(stages: list[Stage]) -> None:
    """The runtime stage installs from the builder's wheels without an index, removes pip and
    never installs a compiler, git, curl or any apt package."""
    runtime = stages[-1]
    runs = " ".join(runtime.all("RUN"))
    assert "from=builder" in runs and "--no-index" in runs and "pip uninstall" in runs
    assert not BUILD_TOOLS.search(runs)
    assert not [c for c in runtime.all("COPY") if "--from=builder" in c]


def test_runs_as_a_fixed_non_root_user(stages: list[Stage]) -> None:
    """The last USER of the runtime stage is a fixed numeric UID and GID other than 0."""
    runtime = stages[-1]
    uid_default = next(a.partition("=")[2] for a in runtime.all("ARG") if a.startswith("SIDECAR_UID="))
    user = runtime.all("USER")[-1].replace("${SIDECAR_UID}", uid_default)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid == uid
    assert "--uid ${SIDECAR_UID}" in " ".join(runtime.all("RUN"))


def test_exposes_ports_and_runs_sidecar_serve(stages: list[Stage]) -> None:
    """The image exposes 8080 and 9090 and its entrypoint is `sidecar serve`."""
    runtime = stages[-1]
    assert runtime.all("EXPOSE") == ["8080 9090"]
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["sidecar", "serve"]


def _healthcheck_command(stages: list[Stage]) -> list[str]:
    check = stages[-1].all("HEALTHCHECK")
    assert len(check) == 1
    match = re.search(r"CMD\s+(\[.*\])\s*$", check[0])
    assert match, check[0]
    command: list[str] = json.loads(match.group(1))
    return command


def test_healthcheck_uses_python_not_curl(stages: list[Stage]) -> None:
    """HEALTHCHECK is exec-form python with urllib on /healthz, with interval and timeout."""
    check = stages[-1].all("HEALTHCHECK")[0]
    assert "--interval=" in check and "--timeout=" in check
    command = _healthcheck_command(stages)
    assert command[:2] == ["python", "-c"] and "urllib.request" in command[2]
    assert "/healthz" in command[2] and "curl" not in check


def test_healthcheck_command_passes_against_a_live_sidecar_and_fails_without_one(
        stages: list[Stage]) -> None:
    """The HEALTHCHECK's python snippet exits 0 against a running sidecar's metrics port and
    non-zero when nothing listens there."""
    snippet = _healthcheck_command(stages)[2]
    port = free_port()
    env = {**os.environ, "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
           "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{port}", "SIDECAR_AUTH_DEMO_KEY": "false",
           "SIDECAR_ADMIN_TOKEN": ""}
    down = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True, check=False)
    assert down.returncode != 0
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for a start-up condition, not a fixed time
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "sidecar did not start"
                time.sleep(0.05)
        up = subprocess.run([sys.executable, "-c", snippet], env=env, capture_output=True,
                            check=False)
        assert up.returncode == 0, up.stderr
    finally:
        proc.terminate()
        assert proc.wait(timeout=40) == 0


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/"))
               for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest(stages: list[Stage]) -> None:
    """Everything the Dockerfile COPYs is in the build context; .venv, .git, tests and bytecode
    are not."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [src for stage in stages for copy in stage.all("COPY") if "--from" not in copy
               for src in copy.split()[:-1]]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not _ignored(src.rstrip("/"), patterns), src
    assert not _ignored("sidecar/store/lua/admit.lua", patterns)
    for path in (".venv/bin/python", ".git/config", "tests/conftest.py", "sidecar/__pycache__/app.pyc",
                 "bench/run_bench.py"):
        assert _ignored(path, patterns), path
