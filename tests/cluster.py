"""A real Redis Cluster on loopback for tests: N masters (optionally with replicas) on free ports.

`RedisCluster(workdir, masters=3).start()` runs `redis-server --cluster-enabled yes` per
node, joins them with `redis-cli --cluster create ... --cluster-yes`, and waits until every
node reports `cluster_state:ok`. `stop()` terminates every node it started. The
`redis_cluster` fixture shares one 3-master cluster per test session.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import stop_processes

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10000 >= 65536:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisClusterNodes:
    """The nodes of one local cluster, which a test may stop, freeze or fail over."""

    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 2000) -> None:
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports: list[int] = []
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Store URL of the cluster (any node seeds the client)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def _start_node(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--save", "",
             "--appendonly", "no", "--dir", str(node_dir), "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _wait(self, what: str, ok: callable, timeout_s: float = 30.0) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout_s
        while not ok():
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis cluster: {what} did not happen in {timeout_s} s")
            time.sleep(0.05)

    def _answers(self, port: int) -> bool:
        try:
            return bool(self.client(port).ping())
        except redis.RedisError:
            return False

    def _state_ok(self, port: int) -> bool:
        try:
            info = self.client(port).execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text

    def start(self) -> None:
        count = self.masters * (1 + self.replicas)
        self.ports = [free_cluster_port() for _ in range(count)]
        for port in self.ports:
            self._start_node(port)
        for port in self.ports:
            self._wait(f"node {port} answering", lambda p=port: self._answers(p))
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        for port in self.ports:
            self._wait(f"cluster_state:ok on {port}", lambda p=port: self._state_ok(p))
        if self.replicas:
            self._wait("replicas attached", self._replicas_synced)

    def _replicas_synced(self) -> bool:
        replicas = 0
        for port in self.ports:
            try:
                info = self.client(port).info("replication")
            except redis.RedisError:
                return False
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                replicas += 1
        return replicas == self.masters * self.replicas

    def flush(self) -> None:
        """Empty every master (between tests sharing the cluster)."""
        for port in self.ports:
            client = self.client(port)
            if client.info("replication").get("role") == "master":
                client.flushall()

    def stop(self) -> None:
        stop_processes(self.procs.values())
        self.procs.clear()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """One real 3-master Redis Cluster per test session (flush it in tests that need it empty)."""
    nodes = RedisClusterNodes(tmp_path_factory.mktemp("cluster"), masters=3)
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()
