"""Connect to the store by URL and run its scripts under one deadline per call.

`memory://` is fakeredis with Lua: one process, nothing persisted (for `make run` and
unit tests). `redis://` and `rediss://` use one blocking connection pool per process with
the hiredis parser; `redis+cluster://` (or `rediss+cluster://`) uses redis-py's cluster
client. `redis+sentinel://` (or `rediss+sentinel://`) asks Redis Sentinel for the master: the
admin and pub/sub client is redis-py's Sentinel `master_for`, and the request path keeps its
one auto-pipelined connection, which asks Sentinel again whenever it (re)connects, on READONLY
or NOREPLICAS, and once a second while busy (see pipelined.py). No call on the request path
waits longer than `store.timeout_s`, and no command is retried after it was sent (a retried
script could charge a request twice).

On the pipelined connection, calls of scripts that compose (`scripts.PAIRS`: admission and
abuse check, settlement and output record) are held until the write: two of a pair for one
tenant leave as one EVALSHA of the composed script, the rest as they are. A `lazy` call
(bookkeeping after a reply) waits up to LAZY_S for a write that leaves anyway.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool, SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from sidecar.errors import ConfigError
from sidecar.log import log_fields
from sidecar.settings import SENTINEL_SCHEMES, StoreSettings, parse_sentinel_url
from sidecar.store.pipelined import (
    Packed,
    PipelinedConnection,
    Sink,
    count,
    flatten,
    hash_tag,
    reply_error,
)
from sidecar.store.scripts import PAIRS, Script, load_scripts

log = logging.getLogger("sidecar.store")

KeyOrArg = str | int | float | bytes | Packed  # a Packed run stands for its values
NOSCRIPT_ATTEMPTS = 3  # loads-and-reruns of a script the store forgot, per call
LAZY_S = 0.002  # how long a lazy call may wait for the next write (bookkeeping after a reply)
# A failure this soon after a recovery is not logged as a new outage (the store flaps while it
# comes back); one that persists is logged at the next failure after it.
RELAPSE_GRACE_S = 2.0


class StoreError(Exception):
    """The store did not answer in time or answered with an error (the caller applies its policy)."""


class StoreCall:
    """One script call already on its way to the store."""

    __slots__ = ("command", "epoch", "future", "name", "store")

    def __init__(self, store: Store, name: str, command: tuple[KeyOrArg, ...],
                 future: asyncio.Future[Any]) -> None:
        self.store, self.name, self.command, self.future = store, name, command, future
        self.epoch = store.epoch  # which up or down period it was sent in

    async def reply(self) -> Any:
        """The script's reply within the store deadline, or StoreError."""
        try:
            result = await self.store._finish(self)
        except StoreError as exc:
            self.store._note(exc, self.epoch)
            raise
        finally:
            if not self.future.done():
                self.future.cancel()  # given up on: its late reply is dropped
        self.store._note(None, self.epoch)
        return result

    def when_done(self, on_done: Callable[[StoreError | None], None]) -> asyncio.Future[Any]:
        """Call `on_done(None)` once the reply is in, or `on_done(StoreError)`, with no task and
        no deadline of its own (for writes nobody waits for: the pipelined connection aborts a
        connection that stops answering). NOSCRIPT goes through `reply()`'s reload-and-rerun in
        a task (rare: after SCRIPT FLUSH, a restart or a failover). Returns the future to wait
        for at shutdown."""

        def booked(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                on_done(StoreError(f"store call {self.name!r} cancelled"))
                return
            error = future.exception()
            self.store._note(error, self.epoch)
            if error is None or isinstance(error, StoreError):
                on_done(error)
            else:
                on_done(StoreError(f"store call {self.name!r} failed: {type(error).__name__}"))

        def outcome(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and isinstance(future.exception(), NoScriptError):
                asyncio.ensure_future(self.store._finish(self)).add_done_callback(booked)
            else:
                booked(future)

        self.future.add_done_callback(outcome)
        return self.future

    def abandon(self) -> None:
        """Nobody will read this reply (the request already failed); the store still runs it."""
        if not self.future.done():
            self.future.cancel()
        elif not self.future.cancelled():
            self.future.exception()  # retrieved: no "never retrieved" warning


class Store:
    """A connected store plus the scripts it runs."""

    def __init__(self, client: Any, *, timeout_s: float, kind: str,
                 fast: PipelinedConnection | None = None) -> None:
        self.client = client
        self.kind = kind  # "memory" | "redis" | "cluster"
        self.timeout_s = timeout_s
        self.scripts: dict[str, Script] = load_scripts()
        # The request path's scripts go over one auto-pipelined connection when there is one;
        # admin commands and pub/sub use the redis-py client.
        self._evalsha = fast.execute if fast is not None else self._client_evalsha
        self._script_load = (lambda src: fast.execute("SCRIPT", "LOAD", src)) if fast is not None \
            else client.script_load
        self.fast = fast
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._down_since: float | None = None  # monotonic time of the outage's first failure
        self.epoch = 0  # +1 at every change between up and down
        self._up_since = float("-inf")  # monotonic time of the last recovery
        # Calls of scripts that compose (scripts.PAIRS), held until this turn's write.
        self._pairs = {(a, b): self.scripts[f"{a}+{b}"] for a, b in PAIRS}
        self._partner = {**{a: b for a, b in PAIRS}, **{b: a for a, b in PAIRS}}
        self._held: list[_Held] = []
        self._held_lazy = False  # every held call may wait (the write is not due yet)
        self._heads = {name: Packed(("EVALSHA", script.sha)) for name, script in self.scripts.items()}

    @property
    def is_memory(self) -> bool:
        return self.kind == "memory"

    async def run(self, name: str, keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg]) -> Any:
        """EVALSHA one script (loading it first on NOSCRIPT) within the store deadline."""
        return await self.start(name, keys, args).reply()

    def start(self, name: str, keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg], *,
              lazy: bool = False) -> StoreCall:
        """Send one script call now and return it; `await call.reply()` waits for the answer.
        Calls started in one event-loop turn leave in one write on the pipelined connection,
        so two of them cost one round trip and no task. A `lazy` call (bookkeeping nobody
        waits for) may wait up to LAZY_S for the next write instead of making its own."""
        nkeys = count(keys)
        command = (self._heads[name], nkeys, *keys, *args)
        fast = self.fast
        if fast is not None:
            partner = self._partner.get(name, "" if lazy else None)  # "": held, never paired
            if partner is not None and fast.connected:
                return StoreCall(self, name, command,
                                 self._hold(name, partner, nkeys, keys, args, command, lazy))
            return StoreCall(self, name, command, fast.send(command))
        return StoreCall(self, name, command, asyncio.ensure_future(self._evalsha(*command)))

    # -- composing the calls of one write ---------------------------------------------------
    def _hold(self, name: str, partner: str, nkeys: int, keys: Sequence[KeyOrArg],
              args: Sequence[KeyOrArg], command: tuple[KeyOrArg, ...],
              lazy: bool) -> asyncio.Future[Any]:
        """Keep a call back until the next write, where it may pair with its partner."""
        assert self.fast is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._held or (self._held_lazy and not lazy):
            self.fast.before_write(self._release, LAZY_S if lazy else 0.0)
            self._held_lazy = lazy
        self._held.append(_Held(name, partner, _first_tag(keys), nkeys, keys, args, command,
                                future))
        return future

    def _release(self) -> None:
        """Send the held calls: two of a composed pair for one tenant (hash tag: every key of
        one of these calls carries the same) as one EVALSHA of the composed script, every other
        one as it is. Replies go straight to the callers' futures (no future in between: no
        extra turn of the loop)."""
        held, self._held = self._held, []
        self._held_lazy = False
        fast = self.fast
        assert fast is not None
        send = fast.send_into if fast.ready else self._send_later
        alone: dict[tuple[str, str], list[_Held]] = {}
        for call in held:
            if call.tag is None:
                send(call.command, call.future)
                continue
            waiting = alone.get((call.partner, call.tag))
            if not waiting:
                alone.setdefault((call.name, call.tag), []).append(call)
                continue
            other = waiting.pop(0)
            first, second = (other, call) if (other.name, call.name) in self._pairs \
                else (call, other)
            script = self._pairs[(first.name, second.name)]
            command = (self._heads[script.name], first.nkeys + second.nkeys, *first.keys,
                       *second.keys, first.nkeys, count(first.args), *first.args, *second.args)
            send(command, _Split(self, script, first.future, second.future))
        for calls in alone.values():
            for call in calls:
                send(call.command, call.future)

    def _send_later(self, command: tuple[KeyOrArg, ...], sink: Sink) -> None:
        """The connection went away (or stopped answering) since the calls were held: send
        through a new one."""
        fast = self.fast
        assert fast is not None

        def copy(future: asyncio.Future[Any]) -> None:
            if sink.done():
                if not future.cancelled():
                    future.exception()  # retrieved: nobody waits for it any more
            elif future.cancelled():
                sink.set_exception(StoreError("store call cancelled"))
            elif (error := future.exception()) is not None:
                sink.set_exception(error)
            else:
                sink.set_result(future.result())

        fast.send(command).add_done_callback(copy)

    def _reload_soon(self, script: Script) -> None:
        """A composed script the store forgot is loaded again for the next pair (its two parts
        are re-run alone by their callers, see `_finish`)."""
        asyncio.ensure_future(self._reload(script)).add_done_callback(
            lambda f: f.cancelled() or f.exception())

    def _note(self, error: BaseException | None, epoch: int) -> None:
        """Log an outage when the first script call fails and the recovery when one succeeds
        again: one line each, however many requests fail in between (they are counted in
        metrics). Only a call sent since the last change counts: a reply that was already on its
        way when the store went down, or a timeout from before it came back, changes nothing.
        Script calls carry every request and the 5 s health check, so they see every outage;
        plain commands (`call`) are left out: redis-py's pool can fail once on a connection that
        went stale during the outage, which would log a second outage right after recovery."""
        if epoch != self.epoch:
            return
        if error is None:
            if self._down_since is not None:
                now = monotonic()
                log_fields(log, logging.WARNING, "store recovered", store=self.kind,
                           down_s=round(now - self._down_since, 3))
                self._down_since = None
                self._up_since = now
                self.epoch += 1
        elif self._down_since is None:
            now = monotonic()
            if now - self._up_since < RELAPSE_GRACE_S:
                return  # the last moments of the same outage (a connection opened before it)
            self._down_since = now
            self.epoch += 1
            cause = error.__cause__ or error
            log_fields(log, logging.ERROR, "store unavailable", store=self.kind,
                       error=type(cause).__name__)

    async def _finish(self, call: StoreCall) -> Any:
        name = call.name
        future = call.future
        if future.done() and not future.cancelled() and future.exception() is None:
            return future.result()  # answered already (it shared a write): no deadline to arm
        try:
            async with asyncio.timeout(self.timeout_s):
                try:
                    return await call.future
                except NoScriptError:
                    pass
                # Emptied by SCRIPT FLUSH, a restart or a failover: load it (once, however many
                # callers saw NOSCRIPT at the same time) and run it again. NOSCRIPT means the
                # script did not run, so a rerun cannot charge twice; another flush can land
                # between the load and the rerun, hence a few attempts within the deadline.
                for attempt in range(NOSCRIPT_ATTEMPTS):
                    await self._reload(self.scripts[name])
                    try:
                        return await self._evalsha(*call.command)
                    except NoScriptError:
                        if attempt == NOSCRIPT_ATTEMPTS - 1:
                            raise
        except TimeoutError as exc:
            raise StoreError(f"store call {name!r} timed out") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"store call {name!r} failed: {type(exc).__name__}") from exc
        except (AttributeError, TypeError, IndexError, KeyError) as exc:
            # redis-py's cluster client can trip over its own state mid-failover (seen: a
            # connection whose writer is None). Whatever it is, it is the store failing.
            raise StoreError(f"store call {name!r} failed: {type(exc).__name__}") from exc

    async def _reload(self, script: Script) -> None:
        pending = self._loading.get(script.name)
        if pending is None:
            pending = asyncio.ensure_future(self._script_load(script.source))
            self._loading[script.name] = pending
            pending.add_done_callback(lambda _: self._loading.pop(script.name, None))
        await asyncio.shield(pending)

    async def _client_evalsha(self, *command: KeyOrArg) -> Any:
        return await self.client.evalsha(*flatten(command)[1:])  # [0] is "EVALSHA"

    async def call(self, op: str, *args: Any) -> Any:
        """Run one plain command (`op` is a redis-py method name) within the store deadline."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await getattr(self.client, op)(*args)
        except TimeoutError as exc:
            raise StoreError(f"store op {op!r} timed out") from exc
        except (RedisError, OSError, AttributeError, TypeError, IndexError) as exc:
            raise StoreError(f"store op {op!r} failed: {type(exc).__name__}") from exc

    async def keys_matching(self, pattern: str) -> list[bytes]:
        """Every key matching `pattern` (SCAN, on every node of a cluster). For the CLI and
        admin listings only, never the request path: it walks the whole keyspace, so its
        deadline is generous."""
        try:
            async with asyncio.timeout(max(40 * self.timeout_s, 10.0)):
                return [key async for key in self.client.scan_iter(match=pattern, count=1000)]
        except TimeoutError as exc:
            raise StoreError("store scan timed out") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"store scan failed: {type(exc).__name__}") from exc

    async def healthy(self) -> bool:
        """True when the scripted path works end to end (not only PING)."""
        try:
            reply = await self.run("health", [], [])
        except StoreError:
            return False
        return isinstance(reply, list) and len(reply) == 2

    def pubsub_client(self) -> Any:
        """A client that can SUBSCRIBE (on a cluster: a plain connection to one node; PUBLISH
        reaches every node of a cluster)."""
        if self.kind != "cluster":
            return self.client
        node = self.client.get_default_node()
        return aioredis.Redis(host=node.host, port=node.port,
                              socket_connect_timeout=self.timeout_s * 4)

    async def close(self) -> None:
        if self.fast is not None:
            await self.fast.close()
        close = getattr(self.client, "aclose", None) or self.client.close
        await close()


class _Held:
    """A script call waiting for the next write (see `Store._hold`)."""

    __slots__ = ("args", "command", "future", "keys", "name", "nkeys", "partner", "tag")

    def __init__(self, name: str, partner: str, tag: str | None, nkeys: int,
                 keys: Sequence[KeyOrArg], args: Sequence[KeyOrArg],
                 command: tuple[KeyOrArg, ...], future: asyncio.Future[Any]) -> None:
        self.name, self.partner, self.tag, self.nkeys = name, partner, tag, nkeys
        self.keys, self.args, self.command, self.future = keys, args, command, future


def _first_tag(keys: Sequence[KeyOrArg]) -> str | None:
    """The hash tag of the first of `keys` (None: no key, or no tag)."""
    if not keys:
        return None
    first = keys[0]
    return first.tag if isinstance(first, Packed) else hash_tag(first)


class _Split:
    """Takes the reply of a composed script like a future and hands each caller its part."""

    __slots__ = ("first", "script", "second", "store")

    def __init__(self, store: Store, script: Script, first: asyncio.Future[Any],
                 second: asyncio.Future[Any]) -> None:
        self.store, self.script, self.first, self.second = store, script, first, second

    def done(self) -> bool:
        return self.first.done() and self.second.done()

    def set_result(self, result: Any, /) -> None:
        for target, part in ((self.first, result[0]), (self.second, result[1])):
            if target.done():
                continue
            if isinstance(part, hiredis.ReplyError):
                target.set_exception(reply_error(part))  # that part failed; the other stands
            else:
                target.set_result(part)

    def set_exception(self, exception: BaseException, /) -> None:
        if isinstance(exception, NoScriptError):
            self.store._reload_soon(self.script)
        for target in (self.first, self.second):
            if not target.done():
                target.set_exception(exception)


def _memory_client() -> Any:
    try:
        import fakeredis  # imported here: only the embedded store needs it
    except ImportError:  # the production image and a plain `pip install` leave it out
        raise ConfigError(
            "store.url: memory:// needs the embedded store, which is not installed "
            "(pip install 'ai-security-sidecar[memory]'); in production set a redis:// URL"
        ) from None

    return fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=False)


async def connect(settings: StoreSettings) -> Store:
    """Open the store named by `settings.url` (no network I/O happens until the first call)."""
    parts = urlsplit(settings.url)
    scheme = parts.scheme
    if scheme == "memory":
        embedded = _memory_client()
        log.warning(
            "embedded memory:// store: single process, nothing persisted; use redis:// in production"
        )
        return Store(embedded, timeout_s=settings.timeout_s, kind="memory")
    common: dict[str, Any] = {
        "socket_timeout": max(settings.timeout_s, 0.5),
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 10,
    }
    if scheme in SENTINEL_SCHEMES:
        return _connect_sentinel(settings, common)
    if scheme.endswith("+cluster"):
        url = urlunsplit((scheme.removesuffix("+cluster"), *parts[1:]))
        # One retry on a dropped connection: redis-py's cluster client sees the server close
        # fresh connections now and then; our scripts are idempotent per request id.
        common["retry"] = Retry(NoBackoff(), 1)
        client: Any = RedisCluster.from_url(url, max_connections=settings.max_connections, **common)
        return Store(client, timeout_s=settings.timeout_s, kind="cluster")
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url, max_connections=settings.max_connections, timeout=settings.timeout_s, **common
    )
    params = parse_url(settings.url)
    fast = PipelinedConnection(
        params.get("host", "localhost"), int(params.get("port", 6379)), db=int(params.get("db", 0)),
        username=params.get("username"), password=params.get("password"),
        ssl_context=tls_context_of(pool), connect_timeout_s=settings.connect_timeout_s,
        stale_after_s=max(1.0, 4 * settings.timeout_s))
    return Store(aioredis.Redis(connection_pool=pool), timeout_s=settings.timeout_s, kind="redis",
                 fast=fast)


def tls_context_of(pool: ConnectionPool) -> ssl.SSLContext | None:
    """The TLS context redis-py's own connections of `pool` use (None without TLS), so the
    request path's pipelined connection honours the same `rediss://` options as the admin path:
    `ssl_ca_certs`, `ssl_certfile`/`ssl_keyfile`, `ssl_cert_reqs`, `ssl_check_hostname`,
    `ssl_min_version`, `ssl_ciphers`. Building a connection object does no I/O."""
    if not issubclass(pool.connection_class, SSLConnection):
        return None
    connection = pool.connection_class(**pool.connection_kwargs)
    context: ssl.SSLContext = connection.ssl_context.get()
    return context


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[misc]
    """Sentinel's pool for the master that waits (up to its timeout) for a free connection
    instead of raising "Too many connections"."""


class _SentinelMasterClient(aioredis.Redis):
    """The master's redis-py client; closing it also closes the connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


def _connect_sentinel(settings: StoreSettings, common: dict[str, Any]) -> Store:
    """The master of a Sentinel-managed Redis, for both the admin client and the request path.

    redis-py's Sentinel client re-discovers the master on a new connection and turns READONLY
    into a dropped connection; the request path's pipelined connection shares its resolver, so
    a re-check there also moves the admin pool's idle connections to the new master."""
    target = parse_sentinel_url(settings.url)
    tls: dict[str, Any] = {"ssl": True} if target.tls else {}
    # Half the connect deadline per sentinel: one hung sentinel leaves time to ask the next.
    per_sentinel_s = settings.connect_timeout_s / 2
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={"socket_timeout": per_sentinel_s, "socket_connect_timeout": per_sentinel_s,
                         "retry": Retry(NoBackoff(), 0), **tls},
    )
    client = sentinel.master_for(
        target.service, redis_class=_SentinelMasterClient,
        connection_pool_class=_BlockingSentinelPool, db=target.db, username=target.username,
        password=target.password, max_connections=settings.max_connections,
        timeout=settings.timeout_s, **common, **tls)
    fast = PipelinedConnection(
        "", 0, db=target.db, username=target.username, password=target.password,
        ssl_context=tls_context_of(client.connection_pool), connect_timeout_s=settings.connect_timeout_s,
        stale_after_s=max(1.0, 4 * settings.timeout_s),
        resolve=client.connection_pool.get_master_address)
    return Store(client, timeout_s=settings.timeout_s, kind="redis", fast=fast)
