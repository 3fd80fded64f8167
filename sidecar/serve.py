"""Run the listeners: one process, or N worker processes sharing the proxy port (SO_REUSEPORT).

SIGTERM drains: /readyz turns 503, the listeners stop accepting, in-flight requests and
streams get `shutdown_grace_s` to finish, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile

from aiohttp import web
from prometheus_client import multiprocess

from sidecar.app import create_admin, create_app, create_health_app
from sidecar.appstate import LIFECYCLE
from sidecar.log import log_fields, setup_logging
from sidecar.mock_upstream import create_mock_app
from sidecar.settings import Settings, url_without_password

log = logging.getLogger("sidecar")
BACKLOG = 1024


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _install_event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stay usable without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def with_mock_upstream(settings: Settings, port: int) -> Settings:
    """The bundled mock answers every API: OpenAI's routes, and Anthropic's unless
    `anthropic.url` names a provider of its own."""
    url = f"http://127.0.0.1:{port}"
    upstream = dataclasses.replace(settings.upstream, url=url)
    anthropic = settings.anthropic if settings.anthropic.url else \
        dataclasses.replace(settings.anthropic, url=url)
    return dataclasses.replace(settings, upstream=upstream, anthropic=anthropic)


class ListenError(Exception):
    """A listener's address cannot be bound (taken, not local, no permission)."""

    def __init__(self, name: str, listen: str, reason: str) -> None:
        super().__init__(f"cannot listen on {listen} ({name} listener): {reason}")
        self.listener, self.address = name, listen


def bind(name: str, listen: str, reuse_port: bool) -> socket.socket:
    """A listening socket on `listen`, bound before anything else starts: an address that is
    taken ends the process at once, with nothing to tear down and no demo key printed."""
    try:
        host, port = split_listen(listen)
        family, _, _, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        return socket.create_server(address, family=family, backlog=BACKLOG, reuse_port=reuse_port)
    except (OSError, ValueError) as exc:
        errno = exc.errno if isinstance(exc, OSError) else None
        reason = os.strerror(errno) if errno else str(exc)
        raise ListenError(name, listen, reason.lower()) from None


def bind_all(settings: Settings, reuse_port: bool) -> dict[str, socket.socket]:
    """Every listener's socket, or ListenError (closing those already bound)."""
    wanted = {"proxy": settings.listen, "metrics": settings.metrics.listen}
    if settings.admin.token:
        wanted["admin"] = settings.admin.listen
    bound: dict[str, socket.socket] = {}
    try:
        for name, listen in wanted.items():
            bound[name] = bind(name, listen, reuse_port)
    except ListenError:
        for sock in bound.values():
            sock.close()
        raise
    return bound


def report_listen_error(exc: ListenError) -> None:
    """The one line a taken address gets (JSON, like every line the sidecar writes)."""
    log_fields(log, logging.ERROR, str(exc), listener=exc.listener, address=exc.address)


async def _start_site(runner: web.AppRunner, sock: socket.socket) -> None:
    await runner.setup()
    await web.SockSite(runner, sock, backlog=BACKLOG).start()


async def run_listeners(settings: Settings, *, reuse_port: bool, run_mock: bool) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before listening: no signal may go unhandled
        loop.add_signal_handler(sig, stop.set)
    try:
        sockets = bind_all(settings, reuse_port)
        mock_sock = bind("mock provider", "127.0.0.1:0", False) if run_mock else None
    except ListenError as exc:
        report_listen_error(exc)
        return 1
    mock_runner: web.AppRunner | None = None
    if mock_sock is not None:
        mock_runner = web.AppRunner(create_mock_app(), access_log=None)
        await _start_site(mock_runner, mock_sock)
        settings = with_mock_upstream(settings, mock_sock.getsockname()[1])
        log_fields(log, logging.WARNING, "no upstream configured: using the bundled mock provider",
                   upstream=settings.upstream.url)

    proxy_app = create_app(settings)
    proxy_runner = web.AppRunner(
        proxy_app,
        handler_cancellation=True,
        keepalive_timeout=settings.header_timeout_s,
        shutdown_timeout=settings.shutdown_grace_s,
        access_log=None,
    )
    await _start_site(proxy_runner, sockets["proxy"])
    health_runner = web.AppRunner(create_health_app(proxy_app), access_log=None,
                                  keepalive_timeout=settings.header_timeout_s)
    await _start_site(health_runner, sockets["metrics"])
    admin_app = create_admin(proxy_app)
    # The admin listener gets the proxy's header deadline (its body deadline is in admin.py).
    admin_runner = web.AppRunner(admin_app, access_log=None,
                                 keepalive_timeout=settings.header_timeout_s) \
        if admin_app is not None else None
    if admin_runner is not None:
        await _start_site(admin_runner, sockets["admin"])
    proxy_app[LIFECYCLE].serving = True  # /readyz may say ready from now on
    log_fields(log, logging.INFO, "sidecar listening", proxy=settings.listen,
               metrics=settings.metrics.listen, upstream=settings.upstream.url,
               store=url_without_password(settings.store.url))

    await stop.wait()

    log_fields(log, logging.INFO, "draining", grace_s=settings.shutdown_grace_s)
    proxy_app[LIFECYCLE].draining = True
    await proxy_runner.cleanup()
    await health_runner.cleanup()
    if admin_runner is not None:
        await admin_runner.cleanup()
    if mock_runner is not None:
        await mock_runner.cleanup()
    log.info("stopped")
    return 0


def _worker(settings: Settings, run_mock: bool) -> None:
    # A SIGTERM while the worker is still starting (nothing accepted yet) ends it cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    setup_logging(settings.log.level)
    _install_event_loop_policy()
    sys.exit(asyncio.run(run_listeners(settings, reuse_port=True, run_mock=run_mock)))


def _mock_process(port: int) -> None:
    _install_event_loop_policy()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    web.run_app(create_mock_app(), host="127.0.0.1", port=port, print=None, access_log=None)


def serve(settings: Settings) -> int:
    """Entry point of `sidecar serve`."""
    setup_logging(settings.log.level)
    run_mock = not settings.upstream.url
    if settings.workers == 1:
        _install_event_loop_policy()
        return asyncio.run(run_listeners(settings, reuse_port=False, run_mock=run_mock))
    return _serve_workers(settings, run_mock)


def _metrics_dir() -> str:
    """A clean directory for prometheus_client's multiprocess files (workers inherit it)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.unlink(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="sidecar-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _serve_workers(settings: Settings, run_mock: bool) -> int:
    try:  # a taken address stops here, once, rather than in every worker
        for sock in bind_all(settings, reuse_port=False).values():
            sock.close()
    except ListenError as exc:
        report_listen_error(exc)
        return 1
    metrics_dir = _metrics_dir()
    ctx = multiprocessing.get_context("spawn")
    mock = None
    if run_mock:
        port = free_port()
        mock = ctx.Process(target=_mock_process, args=(port,), daemon=True)
        mock.start()
        settings = with_mock_upstream(settings, port)
    workers = [ctx.Process(target=_worker, args=(settings, False)) for _ in range(settings.workers)]
    for worker in workers:
        worker.start()

    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for worker in workers:
        worker.join()
        code = worker.exitcode or 0
        if stopping and code == -signal.SIGTERM:
            code = 0  # stopped by our SIGTERM before it had started serving: nothing was lost
        status = status or code
        if worker.pid is not None:
            multiprocess.mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]
    if mock is not None:
        mock.terminate()
        mock.join(5)
    return status
