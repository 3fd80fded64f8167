"""A listener whose address is taken ends `sidecar serve` at once: exit status 1 and one JSON
line naming the address (it used to print the demo key and hang until SIGKILL)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import orjson
import pytest

from tests.conftest import CHEAP_ARGON2, free_port

SETTING_OF = {"proxy": "SIDECAR_LISTEN", "metrics": "SIDECAR_METRICS_LISTEN",
              "admin": "SIDECAR_ADMIN_LISTEN"}


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("taken", ["proxy", "metrics", "admin"])
def test_a_taken_port_exits_1_within_5_s_with_one_line(taken: str, workers: str) -> None:
    """Each listener in turn finds its port taken by another socket: the sidecar exits with
    status 1 within 5 s, prints nothing on stdout (no demo key: nothing started) and writes
    exactly one JSON line that names the address."""
    with socket.create_server(("127.0.0.1", 0)) as holder:
        taken_at = f"127.0.0.1:{holder.getsockname()[1]}"
        env = {**os.environ, **CHEAP_ARGON2, "SIDECAR_ADMIN_TOKEN": os.urandom(24).hex(),
               **{name: f"127.0.0.1:{free_port()}" for name in SETTING_OF.values()},
               SETTING_OF[taken]: taken_at}
        if workers != "1":
            env["SIDECAR_STORE_URL"] = "redis://127.0.0.1:1/0"  # never reached
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve", "--workers", workers],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"sidecar still running 5 s after start with {taken_at} taken")
    assert proc.returncode == 1
    assert time.monotonic() - started < 5
    assert out == b""
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    line = orjson.loads(lines[0])
    assert line["level"] == "error" and line["address"] == taken_at
    assert taken_at in line["msg"] and f"{taken} listener" in line["msg"]


def test_sigterm_while_starting_exits_0_within_5_s() -> None:
    """SIGTERM that arrives while the sidecar is still starting (the demo key is printed before
    the listeners serve) ends it cleanly within 5 s."""
    env = {**os.environ, **CHEAP_ARGON2, **{name: f"127.0.0.1:{free_port()}"
                                            for name in SETTING_OF.values()}}
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert b"Demo API key" in first
    proc.terminate()
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("SIGTERM during start did not end the sidecar within 5 s")
    assert proc.returncode == 0 and time.monotonic() - started < 5
    assert all(orjson.loads(line) for line in err.decode().splitlines())
