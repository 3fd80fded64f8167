"""`sidecar scan [--direction input|output] [--jsonl]`: run the guards on text from stdin.

For tuning and evaluation: the text goes through the same policy pipeline as a request (one
user message; `--policy` names the policy). Input prints the injection score, the action the
proxy would take (`shadow` when a shadow-mode guard would have blocked) and the categories;
output prints the findings and the redacted text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import Any

import orjson

from sidecar.guards.base import BLOCK, FLAG, MODIFY, RequestView
from sidecar.guards.pipeline import SHADOW
from sidecar.model import UNTRUSTED, TextSlot
from sidecar.policies import ActivePolicy, Policies
from sidecar.settings import Settings

_ACTIONS = {BLOCK: "block", FLAG: "flag", SHADOW: "allow", MODIFY: "allow"}


def _input_verdict(policy: ActivePolicy, text: str) -> dict[str, Any]:
    """The policy's input pipeline over one user message: what the proxy would do with it."""
    view = RequestView("chat", (TextSlot("messages[0].content", "user", UNTRUSTED, text),), (0,), 1)
    run = policy.pipeline.run(view)
    score = max((r.verdict.score for r in run.records if r.guard == "injection"), default=0.0)
    categories: list[str] = []
    action = "allow"
    for record in run.records:
        categories.extend(c for c in record.verdict.categories if c not in categories)
        if record.outcome in (BLOCK, FLAG):
            action = _ACTIONS[record.outcome]
        elif record.outcome == SHADOW and action == "allow":
            action = "shadow"
    return {"score": score, "action": action, "categories": categories}


def _output_verdict(policy: ActivePolicy, text: str) -> dict[str, Any]:
    if policy.output is None:
        return {"findings": [], "redacted": text, "blocked": False}
    scan = policy.output.prepare("chat", [])
    assert scan is not None
    findings = scan.scanner.scan(text)
    decision = scan.whole(text)
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
    policies = Policies(settings)
    policy = policies.by_name.get(args.policy) if args.policy else policies.default
    if policy is None:
        sys.stderr.write(f"sidecar scan: unknown policy {args.policy!r}\n")
        return 2
    chosen = policy

    def verdict(text: str) -> dict[str, Any]:
        if args.direction == "input":
            return _input_verdict(chosen, text)
        return _output_verdict(chosen, text)

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
    scan.add_argument("--policy", help="the guard policy to apply (default: 'default')")
    scan.add_argument("--jsonl", action="store_true",
                      help='one {"text": ...} per input line, one verdict per output line')
    scan.set_defaults(func=handler)
