"""One long-lived Redis connection per process with automatic pipelining (DESIGN.md section 10).

Every command issued during one event-loop turn goes out in one write, and replies are matched
to callers in order, so the hot path pays one round trip and no pool checkout, connection churn
or per-command lock. The hiredis parser decodes replies. A caller that gives up (its deadline)
leaves its slot in the queue; the late reply is dropped when it arrives. A connection whose
oldest outstanding reply is far overdue is closed, failing everything queued on it, and the
next command opens a new one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from time import monotonic
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

Arg = str | bytes | int | float


def encode_command(args: tuple[Arg, ...]) -> bytes:
    """RESP encoding of one command (hiredis packs it in C: 3x faster than Python here)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub says 1-tuple
    return packed


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
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
        pending = self.owner._pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.owner._abort(RedisConnectionError("unexpected reply from Redis"))
                return
            future, _ = pending.popleft()
            if future.done():
                continue  # its caller gave up; drop the late reply
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, RedisConnectionError("connection to Redis lost"))


class PipelinedConnection:
    """A Redis connection that batches every command of an event-loop turn into one write."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, use_ssl: bool = False,
                 connect_timeout_s: float = 1.0, stale_after_s: float = 2.0) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.ssl_context = ssl.create_default_context() if use_ssl else None
        self.connect_timeout_s = connect_timeout_s
        self.stale_after_s = stale_after_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outbox: list[bytes] = []
        self._flush_scheduled = False
        self.writes = 0  # socket writes issued (tests and benchmarks read it)

    async def execute(self, *args: Arg) -> Any:
        """Send one command (pipelined with its neighbours) and wait for its reply."""
        protocol = self._protocol or await self._connect()
        if self._stale():
            self._abort(RedisConnectionError("Redis stopped answering"))
            protocol = await self._connect()
        return await self._enqueue(protocol, args)

    def send(self, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        """Queue one command now, without a task, and return its reply future: commands sent
        in one event-loop turn share one write. (Opens the connection first when needed.)"""
        protocol = self._protocol
        if protocol is None or self._stale():
            return asyncio.ensure_future(self.execute(*args))
        return self._enqueue(protocol, args)

    def _stale(self) -> bool:
        return bool(self._pending) and monotonic() - self._pending[0][1] > self.stale_after_s

    def _enqueue(self, protocol: _Protocol, args: tuple[Arg, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, monotonic()))
        self._outbox.append(encode_command(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush, protocol)
        return future

    def _flush(self, protocol: _Protocol) -> None:
        self._flush_scheduled = False
        data, self._outbox = b"".join(self._outbox), []
        if protocol is self._protocol and protocol.transport is not None:
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
                _, protocol = await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port, ssl=self.ssl_context)
                self._protocol = protocol
                if self.password:
                    auth: tuple[Arg, ...] = ("AUTH", self.password) if not self.username else \
                        ("AUTH", self.username, self.password)
                    await self.execute(*auth)
                if self.db:
                    await self.execute("SELECT", self.db)
                return protocol
        except (OSError, TimeoutError) as exc:
            self._protocol = None
            raise RedisConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from exc
        except BaseException:
            self._protocol = None
            raise

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
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError("connection closed"))
