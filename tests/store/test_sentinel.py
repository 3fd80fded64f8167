"""Sentinel store URLs, and the request path's connection finding the master again when it
moves (demoted: READONLY; lost its replicas: NOREPLICAS; named elsewhere by Sentinel)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from sidecar.errors import ConfigError
from sidecar.settings import SentinelURL, load_settings, parse_sentinel_url
from sidecar.store.pipelined import PipelinedConnection
from tests.conftest import RedisProcess

WRITE = ("EVAL", "return redis.call('INCR', KEYS[1])", 1, "writes")


@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://h1:26379,h2:26380/mymaster/2",
     SentinelURL((("h1", 26379), ("h2", 26380)), "mymaster", 2)),
    ("redis+sentinel://h1/mymaster", SentinelURL((("h1", 26379),), "mymaster", 0)),
    ("redis+sentinel://h1:26379/mymaster/", SentinelURL((("h1", 26379),), "mymaster", 0)),
    ("redis+sentinel://[::1]:5000,[fe80::1]/svc/0",
     SentinelURL((("::1", 5000), ("fe80::1", 26379)), "svc", 0)),
    ("rediss+sentinel://10.0.0.1:26379/svc/3",
     SentinelURL((("10.0.0.1", 26379),), "svc", 3, tls=True)),
])
def test_good_sentinel_urls(url: str, expected: SentinelURL) -> None:
    """Sentinel addresses (port 26379 when left out), service name, database and TLS are read."""
    assert parse_sentinel_url(url) == expected
    assert load_settings(env={"SIDECAR_STORE_URL": url}).store.url == url


def test_credentials_are_for_the_master_and_never_echoed() -> None:
    """user:password (percent-decoded) are kept as a Secret; no error message shows them."""
    secret = "p@ss:" + "word"
    parsed = parse_sentinel_url("redis+sentinel://app:p%40ss%3Aword@h1:26379/svc/1")
    assert (parsed.username, parsed.password, parsed.db) == ("app", secret, 1)
    assert secret not in repr(parsed)
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"SIDECAR_STORE_URL": "redis+sentinel://app:" + secret + "@h1:x/svc"})
    assert "word" not in str(caught.value)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel:///mymaster/0", "store.url: needs at least one sentinel host:port"),
    ("redis+sentinel://h1:26379", "store.url: needs the service (master) name as its path"),
    ("redis+sentinel://h1:26379//0", "store.url: needs the service (master) name as its path"),
    ("redis+sentinel://h1:99999/m", "store.url: sentinel address 'h1:99999' needs a port from 1"),
    ("redis+sentinel://h1:abc/m", "store.url: sentinel address 'h1:abc' needs a port from 1"),
    ("redis+sentinel://h1:/m", "store.url: sentinel address 'h1:' needs a port from 1"),
    ("redis+sentinel://h1,,h2/m", "store.url: sentinel address '' needs a host"),
    ("redis+sentinel://:26379/m", "store.url: sentinel address ':26379' needs a host"),
    ("redis+sentinel://[::1/m", "store.url: sentinel address '[::1' is not [ipv6]:port"),
    ("redis+sentinel://h1/m/x", "store.url: the database after the service name must be a whole"),
    ("redis+sentinel://h1/m/0/extra", "store.url: expected /<service>/<db> after the sentinels"),
    ("redis+sentinel://h1/m?db=1", "store.url: a sentinel URL takes no query or fragment"),
    ("sentinel://h1/m", "store.url: expected memory://, redis://, rediss://, redis+cluster:// or "
                        "redis+sentinel://, got scheme 'sentinel'"),
])
def test_bad_sentinel_urls(url: str, message: str) -> None:
    """Each malformed URL is refused with one line that names store.url and what is wrong."""
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"SIDECAR_STORE_URL": url})
    text = str(caught.value)
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.fixture
def two_masters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    servers = (RedisProcess(tmp_path_factory.mktemp("a")), RedisProcess(tmp_path_factory.mktemp("b")))
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


class Named:
    """What a Sentinel would answer: the address of the node it currently calls the master."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.asked = 0

    async def __call__(self) -> tuple[str, int]:
        self.asked += 1
        return "127.0.0.1", self.port


@pytest.fixture
async def connection(two_masters: tuple[RedisProcess, RedisProcess],
                     ) -> AsyncIterator[tuple[PipelinedConnection, Named]]:
    named = Named(two_masters[0].port)
    conn = PipelinedConnection("", 0, connect_timeout_s=2.0, resolve=named)
    yield conn, named
    await conn.close()


async def writes_land_on(conn: PipelinedConnection, server: RedisProcess,
                         within_s: float = 5.0) -> list[str]:
    """Write until a write lands on `server`; the outcomes of the writes before it."""
    deadline = time.monotonic() + within_s
    outcomes: list[str] = []
    while True:
        before = int(server.client().get("writes") or 0)
        try:
            await conn.execute(*WRITE)
        except (ResponseError, RedisConnectionError) as exc:
            outcomes.append(type(exc).__name__)
        else:
            if int(server.client().get("writes") or 0) > before:
                return outcomes
            outcomes.append("elsewhere")
        assert time.monotonic() < deadline, f"writes never reached port {server.port}: {outcomes}"
        await asyncio.sleep(0.02)


async def test_demoted_master_is_left_after_one_readonly(
    connection: tuple[PipelinedConnection, Named], two_masters: tuple[RedisProcess, RedisProcess],
) -> None:
    """The master is turned into a replica (REPLICAOF) and Sentinel names the other node: the
    write sent to the demoted node fails once with READONLY (not re-sent), the next one lands
    on the new master."""
    conn, named = connection
    old, new = two_masters
    await conn.execute(*WRITE)
    old.client().replicaof("127.0.0.1", new.port)
    named.port = new.port
    with pytest.raises(ReadOnlyError):
        await conn.execute(*WRITE)
    assert await writes_land_on(conn, new) == []
    assert new.client().get("writes") == b"1"  # the failed write did not run twice


async def test_node_that_is_not_a_master_is_refused(
    connection: tuple[PipelinedConnection, Named], two_masters: tuple[RedisProcess, RedisProcess],
) -> None:
    """Sentinel still names a node that is already a replica: the connection checks ROLE and
    refuses it instead of sending commands there; once Sentinel names the master, it works."""
    conn, named = connection
    old, new = two_masters
    old.client().replicaof("127.0.0.1", new.port)
    with pytest.raises(RedisConnectionError, match="not a master"):
        await conn.execute(*WRITE)
    named.port = new.port
    assert await writes_land_on(conn, new) == []


async def test_master_without_replicas_is_left_for_the_named_one(
    connection: tuple[PipelinedConnection, Named], two_masters: tuple[RedisProcess, RedisProcess],
) -> None:
    """A master that refuses writes for want of replicas (NOREPLICAS, as during a failover with
    min-replicas-to-write) makes the connection ask Sentinel again; it moves to the node named."""
    conn, named = connection
    old, new = two_masters
    await conn.execute(*WRITE)
    old.client().config_set("min-replicas-to-write", 1)
    named.port = new.port
    started = time.monotonic()
    outcomes = await writes_land_on(conn, new)
    print(f"moved after {time.monotonic() - started:.2f} s: {outcomes}")
    assert outcomes and set(outcomes) <= {"ResponseError", "ConnectionError"}
    assert conn.moves == 1


async def test_master_named_elsewhere_is_followed_while_busy(
    connection: tuple[PipelinedConnection, Named], two_masters: tuple[RedisProcess, RedisProcess],
) -> None:
    """Sentinel names another master while the old one still takes writes (a failover it has
    not noticed): a busy connection asks again within about a second and moves."""
    conn, named = connection
    _, new = two_masters
    await conn.execute(*WRITE)
    asked = named.asked
    named.port = new.port
    await writes_land_on(conn, new)
    assert named.asked > asked and conn.moves == 1
