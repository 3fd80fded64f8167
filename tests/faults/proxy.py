"""A small asyncio TCP fault proxy of our own, between the sidecar and Redis or the upstream.

Modes, switchable while connections are open:
- "pass": forward both ways;
- "delay": forward, holding each chunk `delay_s` first;
- "blackhole": keep connections open but swallow everything (a hung peer);
- "reset": abort every connection with RST and refuse new data.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode = "pass"
        self.delay_s = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "reset":
            self.abort_all()

    def abort_all(self) -> None:
        """Close every proxied connection with an RST (SO_LINGER 0)."""
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            client_w.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, up_w))
        await asyncio.gather(self._pipe(client_r, up_w), self._pipe(up_r, client_w),
                             return_exceptions=True)
        for writer in (client_w, up_w):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                writer.transport.abort()
                return
            if self.mode == "blackhole":
                continue
            if self.mode == "reset":
                self.abort_all()
                return
            if self.mode == "delay" and self.delay_s:
                await asyncio.sleep(self.delay_s)
            writer.write(data)
            await writer.drain()

    async def close(self) -> None:
        self.abort_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
