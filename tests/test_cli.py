"""The command line as a new user meets it: --version, `keys list` without --tenant, and
nothing but JSON on stderr."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from sidecar import __version__
from tests.conftest import CHEAP_ARGON2, create_key, free_port
from tests.test_logs_and_metrics import json_lines


def sidecar(*args: str, store_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CHEAP_ARGON2}
    if store_url is not None:
        env["SIDECAR_STORE_URL"] = store_url
    return subprocess.run([sys.executable, "-m", "sidecar", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_version_prints_the_package_version() -> None:
    """`sidecar --version` prints the version sidecar_build_info carries, and exits 0."""
    result = sidecar("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sidecar {__version__}"


async def test_keys_list_without_tenant_lists_every_tenants_keys(redis_url: str) -> None:
    """`sidecar keys list` with no --tenant lists the keys of every tenant; with --tenant, only
    that tenant's; stderr holds only JSON lines (redis-py used to print a UserWarning)."""
    await create_key(redis_url, tenant="acme")
    await create_key(redis_url, tenant="acme")
    await create_key(redis_url, tenant="globex")
    everything = sidecar("keys", "list", "--json", store_url=redis_url)
    assert everything.returncode == 0, everything.stderr
    json_lines(everything.stderr)
    tenants = sorted(k["tenant"] for k in orjson.loads(everything.stdout)["data"])
    assert tenants == ["acme", "acme", "globex"]
    one = sidecar("keys", "list", "--tenant", "globex", "--json", store_url=redis_url)
    assert [k["tenant"] for k in orjson.loads(one.stdout)["data"]] == ["globex"]
    human = sidecar("keys", "list", store_url=redis_url)
    assert human.returncode == 0 and human.stdout.count("tenant=") == 3


def test_memory_store_without_its_extra_is_a_config_error() -> None:
    """Where fakeredis is not installed (the production image, a plain `pip install`),
    `sidecar serve` on the default memory:// store stops with one line saying what to install
    or to set a redis:// URL, exit status 2, instead of a traceback."""
    code = ("import sys; sys.modules['fakeredis'] = None  # as if not installed\n"
            "from sidecar.__main__ import main; sys.exit(main(['serve']))")
    env = {**os.environ, **CHEAP_ARGON2, "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}",
           "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{free_port()}", "SIDECAR_ADMIN_TOKEN": ""}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "sidecar: config error: store.url: memory:// needs the embedded store" in result.stderr
    assert "ai-security-sidecar[memory]" in result.stderr and "Traceback" not in result.stderr
