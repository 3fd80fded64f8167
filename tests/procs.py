"""Run the sidecar as a real process (for signals, workers and the command line)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field

import aiohttp

from tests.conftest import CHEAP_ARGON2, CREATED_KEYS, free_port


@dataclass
class SidecarProcess:
    """`python -m sidecar serve` with SIDECAR_* settings; ports chosen free."""

    env: dict[str, str]
    args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    async def start(self, timeout_s: float = 20.0) -> None:
        env = {**os.environ, "SIDECAR_LISTEN": f"127.0.0.1:{self.port}",
               "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
               "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
               # Tests of behaviour, not latency: a busy CI machine must not turn into 503s.
               "SIDECAR_STORE_TIMEOUT_S": "2", **CHEAP_ARGON2, **self.env}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", *self.args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await self.wait_ready(timeout_s)

    async def wait_ready(self, timeout_s: float) -> None:
        """Poll /readyz until it answers 200 (a start-up condition, not a fixed sleep)."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc is not None and self.proc.returncode is None, "sidecar exited"
                try:
                    async with session.get(self.metrics_url + "/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "sidecar did not become ready"
                await asyncio.sleep(0.05)

    async def stop(self) -> tuple[int, str]:
        """SIGTERM, wait, and return (exit status, stderr)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.terminate()
        _, err = await asyncio.wait_for(self.proc.communicate(), 60)
        text = err.decode(errors="replace")
        leaked = [key[:12] for key in CREATED_KEYS if key in text]
        assert not leaked, f"raw keys in the sidecar's log: {leaked}"
        return self.proc.returncode or 0, text
