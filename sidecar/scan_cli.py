"""`sidecar scan [--direction input|output] [--jsonl]`: run the guards on text from stdin.

For tuning and evaluation: input prints the injection score, the action the configured policy
would take and the categories; output prints the findings and the redacted text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from sidecar.guards.injection import InjectionDetector
from sidecar.guards.redact import OutputScanner, apply_actions
from sidecar.settings import Settings


def _input_verdict(detector: InjectionDetector, settings: Settings, text: str) -> dict[str, Any]:
    result = detector.score_text(text)
    action = "allow"
    if result.detected and settings.input.injection_action != "off":
        action = "flag" if settings.input.injection_action == "flag" else "block"
    return {"score": result.score, "action": action, "categories": list(result.categories)}


def _output_verdict(scanner: OutputScanner, actions: dict[str, str], text: str) -> dict[str, Any]:
    findings = scanner.scan(text)
    decision = apply_actions(text, findings, actions)
    return {"findings": [{"start": f.start, "end": f.end, "kind": f.kind} for f in findings],
            "redacted": decision.text, "blocked": decision.blocked}


def _texts(jsonl: bool) -> Iterator[str]:
    if not jsonl:
        yield sys.stdin.read()
        return
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise ValueError(f"line {number}: not JSON") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ValueError(f'line {number}: expected {{"text": "..."}}')
        yield item["text"]


def run_scan(settings: Settings, args: argparse.Namespace) -> int:
    if args.direction == "input":
        detector = InjectionDetector(threshold=settings.input.injection_threshold)

        def verdict(text: str) -> dict[str, Any]:
            return _input_verdict(detector, settings, text)
    else:
        scanner = OutputScanner(provider_key=settings.upstream_key or None,
                                admin_token=settings.admin.token or None, ip=settings.output.detect_ip)
        actions = dict(settings.output.actions)

        def verdict(text: str) -> dict[str, Any]:
            return _output_verdict(scanner, actions, text)
    try:
        for text in _texts(args.jsonl):
            sys.stdout.write(orjson.dumps(verdict(text)).decode() + "\n")
    except ValueError as exc:
        sys.stderr.write(f"sidecar scan: {exc}\n")
        return 2
    return 0


def add_scan_parser(sub: Any, handler: Any) -> None:
    scan = sub.add_parser("scan", help="run the guards on text from stdin and print the verdict")
    scan.add_argument("--config", help="TOML settings file (or SIDECAR_CONFIG)")
    scan.add_argument("--direction", choices=("input", "output"), default="input")
    scan.add_argument("--jsonl", action="store_true",
                      help='one {"text": ...} per input line, one verdict per output line')
    scan.set_defaults(func=handler)
