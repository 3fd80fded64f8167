"""Shared fixtures: a real redis-server per session, the mock provider, sidecars under test."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.app import create_app
from sidecar.auth.hashing import SecretHasher
from sidecar.auth.records import KeyRecords, parse_key_spec
from sidecar.log import JsonFormatter
from sidecar.metrics import Metrics
from sidecar.mock_upstream import create_mock_app
from sidecar.settings import Settings, load_settings
from sidecar.store.redis import connect

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# In CI every property test draws the same examples: a red build is never a matter of luck.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, deadline=None)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")


def stop_processes(procs: Iterable[subprocess.Popen[Any]]) -> None:
    """SIGTERM every process still running, then wait for each (SIGKILL after 10 s)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A redis-server of our own on a free port, which a test may stop, freeze or restart."""

    def __init__(self, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Poll until the server answers PING (start-up condition, not a fixed sleep)."""
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_proc: RedisProcess) -> str:
    """A clean database on the session's redis-server."""
    redis_proc.client().flushall()
    return redis_proc.url


@pytest.fixture
async def mock_upstream(aiohttp_server: Any) -> TestServer:
    server: TestServer = await aiohttp_server(create_mock_app())
    return server


# Every raw key a test creates; no log line of the whole run may contain one.
CREATED_KEYS: set[str] = set()


class _KeyLeakWatch(logging.Handler):
    """Formats every log record as the sidecar would and remembers any that holds a raw key."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.leaks.extend(key[:12] for key in CREATED_KEYS if key in line)


@pytest.fixture(autouse=True)
def no_key_in_logs() -> Iterator[None]:
    """Fails the test if any log line (at DEBUG, through the JSON formatter) holds a raw key."""
    watch = _KeyLeakWatch()
    root = logging.getLogger()
    level = root.level
    root.addHandler(watch)
    root.setLevel(logging.DEBUG)
    yield
    root.removeHandler(watch)
    root.setLevel(level)
    assert not watch.leaks, f"raw keys in log lines: {watch.leaks}"


# argon2 at its cheapest for tests that are not about argon2 (tests/auth uses the defaults).
CHEAP_ARGON2 = {"SIDECAR_AUTH_ARGON2_TIME_COST": "1", "SIDECAR_AUTH_ARGON2_MEMORY_KIB": "8192",
                "SIDECAR_AUTH_ARGON2_PARALLELISM": "1"}
ALL_SCOPES = ["chat", "completions", "embeddings", "models", "conversations", "responses",
              "messages"]


async def create_key(store_url: str, tenant: str = "tenant-a", scopes: list[str] | None = None,
                     limits: list[dict[str, int]] | None = None, cheap: bool = True,
                     **extra: Any) -> str:
    """Create a key in the store as an operator would (the admin path); returns the raw key."""
    # The admin path, not the hot path: a loaded test machine must not turn a slow SET into a
    # setup error, so the store deadline is generous here.
    settings = load_settings(env={"SIDECAR_STORE_URL": store_url, "SIDECAR_STORE_TIMEOUT_S": "5",
                                  **(CHEAP_ARGON2 if cheap else {})})
    store = await connect(settings.store)
    a = settings.auth
    hasher = SecretHasher(a.argon2_time_cost, a.argon2_memory_kib, a.argon2_parallelism, 1)
    try:
        spec = parse_key_spec({"tenant": tenant, "scopes": scopes or ALL_SCOPES,
                               "limits": limits or [], **extra})
        raw, _ = await KeyRecords(store, hasher).create(spec)
        CREATED_KEYS.add(raw)
        return raw
    finally:
        hasher.close()
        await store.close()


@pytest.fixture
async def api_key(redis_url: str) -> str:
    """A key with every scope, created at runtime in the test's Redis."""
    return await create_key(redis_url)


@pytest.fixture
def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
async def session(auth_headers: dict[str, str]) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that presents the test's API key on every request."""
    async with aiohttp.ClientSession(headers=auth_headers) as client:
        yield client


def settings_for(upstream_url: str, store_url: str, **env: str) -> Settings:
    """Settings as an operator would give them: through SIDECAR_* variables."""
    base = {
        "SIDECAR_UPSTREAM_URL": upstream_url,
        "SIDECAR_STORE_URL": store_url,
        "SIDECAR_UPSTREAM_KEY_ENV": "TEST_PROVIDER_KEY",
        "SIDECAR_STORE_TIMEOUT_S": "2",  # behaviour, not latency, is under test here
        **CHEAP_ARGON2,
    }
    base.update(env)
    return load_settings(env=base)


SidecarFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def provider_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A provider key generated for this test run, as the sidecar reads it from the environment."""
    key = "prov-" + os.urandom(16).hex()
    monkeypatch.setenv("TEST_PROVIDER_KEY", key)
    return key


@pytest.fixture
async def make_sidecar(
    aiohttp_server: Any, mock_upstream: TestServer, redis_url: str, provider_key: str
) -> AsyncIterator[SidecarFactory]:
    """Start a sidecar app on a real port; keyword arguments become SIDECAR_* settings."""

    async def factory(
        *, upstream_url: str | None = None, configure: Callable[[web.Application], None] | None = None,
        metrics: Metrics | None = None, **env: str,
    ) -> TestServer:
        url = upstream_url or str(mock_upstream.make_url("")).rstrip("/")
        settings = settings_for(url, redis_url, **{f"SIDECAR_{k.upper()}": v for k, v in env.items()})
        app = create_app(settings, metrics)
        if configure is not None:
            configure(app)
        server: TestServer = await aiohttp_server(
            app, keepalive_timeout=settings.header_timeout_s, access_log=None
        )
        return server

    yield factory
