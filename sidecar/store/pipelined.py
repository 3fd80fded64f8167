"""One long-lived Redis connection per process with automatic pipelining.

Every command issued during one event-loop turn goes out in one write, and replies are matched
to callers in order, so the hot path pays one round trip and no pool checkout, connection churn
or per-command lock. The hiredis parser decodes replies. A caller that gives up (its deadline)
leaves its slot in the queue; the late reply is dropped when it arrives. A connection whose
oldest outstanding reply is far overdue is closed, failing everything queued on it, and the
next command opens a new one.

Behind Redis Sentinel the connection is given a `resolve` function that names the current master:
every new connection asks it first and checks with ROLE that it reached a master. A READONLY
reply (the master was demoted under us) closes the connection at once; a NOREPLICAS reply, and
once a second while commands flow, ask `resolve` again in the background and close the
connection if the master has moved. Commands already sent fail (they are never re-sent: a
script must not charge twice); the next command reaches the new master.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from time import monotonic
from typing import Any, Protocol

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError

Arg = str | bytes | int | float


class Sink(Protocol):
    """Where a reply goes: an asyncio future, or anything that takes a reply like one."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...

Resolver = Callable[[], Awaitable[tuple[str, int]]]
# How often the master's address is checked again while commands flow, and how soon after a
# NOREPLICAS reply (the master lost its replicas: maybe a failover is under way).
RECHECK_S = 1.0
SUSPECT_RECHECK_S = 0.1


class Packed:
    """A run of command arguments encoded once (RESP bulk strings): for what a caller sends
    again and again (a limit plan's keys and windows, the abuse settings). hiredis packs ~0.2 us
    per argument; a script call of 50 arguments spent ~10 us of the request's CPU on it."""

    __slots__ = ("resp", "tag", "values")

    def __init__(self, values: Iterable[Arg]) -> None:
        self.values: tuple[Arg, ...] = tuple(values)
        self.resp = _bulks(self.values) if self.values else b""
        # The Cluster hash tag of the first value, when these are keys (see store.redis).
        self.tag = hash_tag(self.values[0]) if self.values else None

    def __len__(self) -> int:
        return len(self.values)


Part = Arg | Packed


def hash_tag(key: Arg) -> str | None:
    """The Cluster hash tag of a key (the text between the first { and the next }), or None."""
    text = key.decode() if isinstance(key, bytes) else str(key)
    start = text.find("{")
    end = text.find("}", start + 1)
    return text[start + 1:end] if start >= 0 and end > start + 1 else None


def _bulks(args: tuple[Arg, ...]) -> bytes:
    """The bulk strings of `args`, without the command's `*<count>` header."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub says 1-tuple
    return packed[packed.index(b"\r\n") + 2:]


def flatten(args: tuple[Part, ...]) -> tuple[Arg, ...]:
    """The plain arguments of a command (for clients that know nothing of Packed)."""
    out: list[Arg] = []
    for arg in args:
        if isinstance(arg, Packed):
            out.extend(arg.values)
        else:
            out.append(arg)
    return tuple(out)


def count(args: Sequence[Part]) -> int:
    """How many arguments `args` stand for (a Packed counts its values)."""
    total = len(args)
    for arg in args:
        if type(arg) is Packed:
            total += len(arg.values) - 1
    return total


def encode_command(args: tuple[Part, ...]) -> bytes:
    """RESP encoding of one command. A command that starts plain is packed by hiredis in C; one
    that starts with a Packed run (a script call: its EVALSHA head) has its runs spliced in as
    they are and its few other arguments encoded here, cheaper than one more call of hiredis'
    pack_command (~1.5 us per call, whatever its length)."""
    if not args or not isinstance(args[0], Packed):
        packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: 1-tuple
        return packed
    chunks: list[bytes] = []
    total = 0
    for arg in args:
        if isinstance(arg, Packed):
            chunks.append(arg.resp)
            total += len(arg.values)
            continue
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int):
            data = b"%d" % arg
        else:
            data = repr(arg).encode()
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
        total += 1
    return b"*%d\r\n" % total + b"".join(chunks)


def reply_error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith("READONLY"):
        return ReadOnlyError(message)
    return ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: PipelinedConnection) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: Any = None  # asyncio's or uvloop's TCP transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        owner = self.owner
        pending = owner._pending
        demoted = False
        while True:
            reply = self.reader.gets()
            if reply is False:
                break
            if not pending:  # a reply nobody asked for: the stream is out of step
                owner._abort(RedisConnectionError("unexpected reply from Redis"))
                return
            future, _ = pending.popleft()
            if isinstance(reply, hiredis.ReplyError):
                error = reply_error(reply)
                if owner.resolve is not None:
                    demoted = owner._demoted_by(error) or demoted
                if not future.done():
                    future.set_exception(error)
            elif not future.done():  # else its caller gave up; drop the late reply
                future.set_result(reply)
        if demoted:
            owner._abort(RedisConnectionError("the Redis master was demoted (READONLY)"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, RedisConnectionError("connection to Redis lost"))


class PipelinedConnection:
    """A Redis connection that batches every command of an event-loop turn into one write."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 connect_timeout_s: float = 1.0, stale_after_s: float = 2.0,
                 resolve: Resolver | None = None) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        # TLS exactly as the admin client's (CA file, client certificate, verification options
        # from the rediss:// URL): see store/redis.py `tls_context_of`.
        self.ssl_context = ssl_context
        self.connect_timeout_s = connect_timeout_s
        self.stale_after_s = stale_after_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._pending: deque[tuple[Sink, float]] = deque()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self._before_write: list[Callable[[], None]] = []
        self._lazy: asyncio.TimerHandle | None = None  # a write that may wait for company
        self.writes = 0  # socket writes issued (tests and benchmarks read it)
        # Sentinel: names the master before every connect (host and port above are then ignored).
        self.resolve = resolve
        self._recheck: asyncio.Future[None] | None = None
        self._last_check = float("-inf")
        self.moves = 0  # times a connection was dropped because the master moved (tests read it)

    async def execute(self, *args: Part) -> Any:
        """Send one command (pipelined with its neighbours) and wait for its reply."""
        protocol = self._protocol or await self._connect()
        if self._stale():
            self._abort(RedisConnectionError("Redis stopped answering"))
            protocol = await self._connect()
        if self.resolve is not None:
            self._check_master(RECHECK_S)
        return await self._enqueue(protocol, args)

    def send(self, args: tuple[Part, ...]) -> asyncio.Future[Any]:
        """Queue one command now, without a task, and return its reply future: commands sent
        in one event-loop turn share one write. (Opens the connection first when needed.)"""
        protocol = self._protocol
        if protocol is None or self._stale():
            return asyncio.ensure_future(self.execute(*args))
        if self.resolve is not None:
            self._check_master(RECHECK_S)
        return self._enqueue(protocol, args)

    @property
    def connected(self) -> bool:
        """A connection is open (it may still turn out stale when a command is queued)."""
        return self._protocol is not None

    @property
    def ready(self) -> bool:
        """Connected and answering: a command queued now leaves in this turn's write."""
        return self._protocol is not None and not self._stale()

    def before_write(self, hook: Callable[[], None], delay_s: float = 0.0) -> None:
        """Run `hook` once, right before a write (commands it sends join that write). Only while
        `ready`. With `delay_s`, the write may wait that long: whatever leaves sooner (the next
        request's admission) takes the hook along, so bookkeeping nobody waits for shares a
        write (and a read on both ends) with the next request instead of costing its own."""
        self._before_write.append(hook)
        if self._flush_scheduled or self._protocol is None:
            return
        loop = asyncio.get_running_loop()
        if delay_s <= 0:
            self._flush_scheduled = True
            loop.call_soon(self._flush, self._protocol)
        elif self._lazy is None:
            self._lazy = loop.call_later(delay_s, self._flush_lazy)

    def _flush_lazy(self) -> None:
        self._lazy = None
        if self._flush_scheduled or not self._before_write:
            return
        protocol = self._protocol
        if protocol is None:  # lost meanwhile: the hooks send through a new connection
            hooks, self._before_write = self._before_write, []
            for hook in hooks:
                hook()
            return
        self._flush_scheduled = True
        self._flush(protocol)

    def _stale(self) -> bool:
        return bool(self._pending) and monotonic() - self._pending[0][1] > self.stale_after_s

    def _enqueue(self, protocol: _Protocol, args: tuple[Part, ...]) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(protocol, args, future)
        return future

    def send_into(self, args: tuple[Part, ...], sink: Sink) -> None:
        """Queue one command whose reply (or error) goes to `sink`; only while `ready`."""
        protocol = self._protocol
        assert protocol is not None
        self._queue(protocol, args, sink)

    def _queue(self, protocol: _Protocol, args: tuple[Part, ...], sink: Sink) -> None:
        self._pending.append((sink, monotonic()))
        self._outbox.append(encode_command(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, protocol)

    def _flush(self, protocol: _Protocol) -> None:
        while self._before_write:
            hooks, self._before_write = self._before_write, []
            for hook in hooks:
                hook()
        if self._lazy is not None:  # what it waited for leaves now: no wake-up for nothing
            self._lazy.cancel()
            self._lazy = None
        self._flush_scheduled = False
        data, self._outbox = b"".join(self._outbox), []
        if data and protocol is self._protocol and protocol.transport is not None:
            protocol.transport.write(data)
            self.writes += 1

    async def _connect(self) -> _Protocol:
        if self._protocol is not None:
            return self._protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            # Every waiter may have given up (deadline); the outcome is still looked at.
            self._connecting.add_done_callback(lambda f: f.cancelled() or f.exception())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.resolve is not None:
                    self._last_check = monotonic()
                    self.host, self.port = await self.resolve()
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port, ssl=self.ssl_context)
                self._protocol = protocol
                if self.password:
                    auth: tuple[Arg, ...] = ("AUTH", self.password) if not self.username else \
                        ("AUTH", self.username, self.password)
                    await self.execute(*auth)
                if self.db:
                    await self.execute("SELECT", self.db)
                if self.resolve is not None:
                    # Sentinel may still name a demoted master for a moment: writing to it
                    # would be refused (READONLY) or, worse, lost.
                    role = await self.execute("ROLE")
                    if not role or role[0] != b"master":
                        raise RedisConnectionError("the node Sentinel named is not a master")
                return protocol
        except (OSError, TimeoutError) as exc:
            self._discard_opening(RedisConnectionError("connect failed"))
            raise RedisConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from exc
        except BaseException as exc:
            self._discard_opening(exc if isinstance(exc, RedisError) else
                                  RedisConnectionError("connect failed"))
            raise

    def _discard_opening(self, error: Exception) -> None:
        """A connection that failed while being set up is closed, and whatever was queued on it
        fails (left in the queue, it would take the next connection's replies)."""
        if self._protocol is not None:
            self._abort(error)
        self._protocol = None

    def _demoted_by(self, error: ResponseError) -> bool:
        """Sentinel only: True when `error` says this node is no longer a writable master."""
        if isinstance(error, ReadOnlyError):
            return True
        if str(error).startswith("NOREPLICAS"):
            self._check_master(SUSPECT_RECHECK_S)
        return False

    def _check_master(self, min_gap_s: float) -> None:
        """Ask `resolve` in the background (one at a time, at most once per `min_gap_s`) whether
        the master is still the node this connection talks to."""
        protocol = self._protocol
        if self._recheck is not None or protocol is None:
            return
        now = monotonic()
        if now - self._last_check < min_gap_s:
            return
        self._last_check = now
        self._recheck = asyncio.ensure_future(self._compare_master(protocol))

    async def _compare_master(self, protocol: _Protocol) -> None:
        assert self.resolve is not None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                address = await self.resolve()
        except (RedisError, OSError, TimeoutError):
            return  # the sentinels did not answer: keep the connection that works
        finally:
            self._recheck = None
        if protocol is self._protocol and address != (self.host, self.port):
            self.moves += 1
            self._abort(RedisConnectionError("Sentinel names another master"))

    def _abort(self, error: Exception) -> None:
        protocol = self._protocol
        if protocol is not None:
            self._lost(protocol, error)
            if protocol.transport is not None:
                protocol.transport.abort()

    def _lost(self, protocol: _Protocol, error: Exception) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._outbox = []
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self._before_write:  # what waits for a write (held or lazy calls) leaves now
            if self._protocol is not None:
                self._flush_scheduled = True
                self._flush(self._protocol)
            else:
                self._flush_lazy()
        if self._lazy is not None:
            self._lazy.cancel()
            self._lazy = None
        if self._recheck is not None:
            self._recheck.cancel()
            await asyncio.gather(self._recheck, return_exceptions=True)
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError("connection closed"))
