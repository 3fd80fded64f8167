"""A real Redis Sentinel deployment on loopback for tests: 1 master, N replicas, 3 sentinels.

Every process is a `redis-server` of its own on a free port (sentinels run `redis-server
<conf> --sentinel` with a config written to the test's tmp dir). The sentinels are told about
the replicas and about each other in their configs, so they agree on the topology within a
second instead of after the 10 s INFO period. `stop()` terminates every process it started.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.conftest import REDIS_SERVER, free_port, stop_processes

SERVICE = "sidecar-master"


def wait_for(what: str, ok: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll `ok` until it holds (a condition with a deadline, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline:
            raise TimeoutError(f"sentinel deployment: {what} did not happen in {timeout_s} s")
        time.sleep(0.02)


class SentinelDeployment:
    """Master, replicas and three sentinels, which a test may fail over."""

    def __init__(self, workdir: Path, replicas: int = 1, node_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.node_args = node_args
        self.data_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The store URL a sidecar is given."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def _run(self, *args: str, log: str) -> None:
        self.procs.append(subprocess.Popen(
            [REDIS_SERVER, *args, "--logfile", str(self.workdir / log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def start(self) -> None:
        master, *replicas = self.data_ports
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                  "--dir", str(self.workdir), *self.node_args)
        self._run("--port", str(master), *common, log=f"redis-{master}.log")
        for port in replicas:
            self._run("--port", str(port), "--replicaof", "127.0.0.1", str(master), *common,
                      log=f"redis-{port}.log")
        ids = {port: f"{i + 1:040x}" for i, port in enumerate(self.sentinel_ports)}
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            lines = [f"port {port}", "bind 127.0.0.1", f"dir {self.workdir}",
                     f"sentinel myid {ids[port]}",
                     f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2",
                     f"sentinel down-after-milliseconds {SERVICE} 2000",
                     f"sentinel failover-timeout {SERVICE} 10000",
                     *(f"sentinel known-replica {SERVICE} 127.0.0.1 {r}" for r in replicas),
                     *(f"sentinel known-sentinel {SERVICE} 127.0.0.1 {other} {ids[other]}"
                       for other in self.sentinel_ports if other != port)]
            conf.write_text("\n".join(lines) + "\n")
            self._run(str(conf), "--sentinel", log=f"sentinel-{port}.log")
        wait_for("every sentinel sees the master, its replicas and the other sentinels",
                 self._agreed)

    def _agreed(self) -> bool:
        try:
            for port in self.sentinel_ports:
                sentinel = self.client(port)
                master = sentinel.sentinel_master(SERVICE)
                replicas = sentinel.sentinel_slaves(SERVICE)
                if master["num-other-sentinels"] < 2 or len(replicas) != len(self.data_ports) - 1:
                    return False
                if not all(r["flags"] == "slave" and r["master-link-status"] == "ok"
                           for r in replicas):
                    return False
        except redis.RedisError:
            return False
        return True

    def master_port(self) -> int:
        """The master's port as the first sentinel names it."""
        _, port = self.client(self.sentinel_ports[0]).sentinel_get_master_addr_by_name(SERVICE)
        return int(port)

    def role(self, port: int) -> str:
        try:
            reply = self.client(port).execute_command("ROLE")
        except redis.RedisError:
            return "down"
        return reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])

    def failover(self) -> None:
        """`SENTINEL FAILOVER <service>`: promote a replica without the master failing."""
        self.client(self.sentinel_ports[0]).execute_command("SENTINEL", "FAILOVER", SERVICE)

    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs.clear()
