"""Command line: serve, keys, scan, inject, mock-upstream, check-config."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import orjson

from sidecar import __version__
from sidecar.errors import ConfigError
from sidecar.inject import add_inject_parser
from sidecar.keys_cli import add_keys_parser
from sidecar.log import setup_cli_logging
from sidecar.scan_cli import add_scan_parser
from sidecar.settings import Settings, describe, load_settings


def _settings(path: str | None, workers: int | None = None) -> Settings:
    settings = load_settings(path)
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"workers: must be at least 1, got {workers}")
        settings = dataclasses.replace(settings, workers=workers)
    if settings.workers > 1 and settings.store.url.startswith("memory:"):
        raise ConfigError("store.url: memory:// is per process; use redis:// with --workers > 1")
    return settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from sidecar.serve import serve

    return serve(_settings(args.config, args.workers))


def _cmd_check_config(args: argparse.Namespace) -> int:
    sys.stdout.write(orjson.dumps(describe(_settings(args.config)),
                                  option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def _cmd_mock_upstream(args: argparse.Namespace) -> int:
    from aiohttp import web

    from sidecar.mock_upstream import create_mock_app
    from sidecar.serve import _install_event_loop_policy

    _install_event_loop_policy()
    print(f"mock provider on http://{args.host}:{args.port}/v1", flush=True)
    web.run_app(create_mock_app(latency_ms=args.latency_ms), host=args.host, port=args.port,
                print=None, access_log=None)
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from sidecar.keys_cli import run_keys_command

    return run_keys_command(_settings(args.config), args)


def _cmd_scan(args: argparse.Namespace) -> int:
    from sidecar.scan_cli import run_scan

    return run_scan(_settings(args.config), args)


def _cmd_inject(args: argparse.Namespace) -> int:
    from sidecar.inject import run_inject

    return run_inject(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description="Security sidecar for LLM traffic")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the sidecar")
    serve.add_argument("--config", help="TOML settings file (or SIDECAR_CONFIG)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the proxy port")
    serve.set_defaults(func=_cmd_serve)
    check = sub.add_parser("check-config", help="validate and print the effective settings")
    check.add_argument("--config", help="TOML settings file (or SIDECAR_CONFIG)")
    check.set_defaults(func=_cmd_check_config)
    mock = sub.add_parser("mock-upstream", help="run the bundled OpenAI-compatible mock provider")
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, default=8081)
    mock.add_argument("--latency-ms", type=float, default=0.0)
    mock.set_defaults(func=_cmd_mock_upstream)
    add_keys_parser(sub, _cmd_keys)
    add_scan_parser(sub, _cmd_scan)
    add_inject_parser(sub, _cmd_inject)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Warnings and log records of every command are JSON lines on stderr (serve sets its level).
    setup_cli_logging()
    try:
        status: int = args.func(args)
    except ConfigError as exc:
        sys.stderr.write(f"sidecar: config error: {exc}\n")
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
