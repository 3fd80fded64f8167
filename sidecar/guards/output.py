"""The output guard of one policy: what scans a reply, whole or streamed, and what it does.

The compiled secret/PII scanner is shared by every policy (it is built once per process); a
policy adds its actions and mode, and each request adds what only it knows: the system prompt
(a reply quoting it is a leak) and, when enabled, a canary placed in the system message.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.guards.base import Stage
from sidecar.guards.leaks import CanaryScanner, SystemPromptLeak, insert_canary, make_canary
from sidecar.guards.redact import CombinedScanner, OutputDecision, Scanner, apply_actions
from sidecar.guards.stream import StreamRedactor
from sidecar.model import TRUSTED, TextSlot


@dataclass(slots=True)
class ResponseScan:
    """The output guard for one request: its scanner (shared + per-request leak scanners)."""

    scanner: Scanner
    actions: Mapping[str, str]
    holdback: int

    def whole(self, text: str) -> OutputDecision:
        return apply_actions(text, self.scanner.scan(text), self.actions)

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self.scanner, self.actions, holdback=self.holdback)


def shadow_actions(actions: Mapping[str, str]) -> dict[str, str]:
    """Shadow mode: every finding is counted (flag), none changes the reply."""
    out = {kind: ("flag" if action != "off" else "off") for kind, action in actions.items()}
    out.setdefault("*", "flag")
    return out


class OutputGuard:
    """Builds the per-request output scan of one policy."""

    name = "output"
    stage = Stage.STREAM

    def __init__(self, scanner: Scanner, actions: Mapping[str, str], *, shadow: bool = False,
                 system_prompt_min_words: int = 8, canary: bool = False,
                 holdback: int = 8192) -> None:
        self.scanner = scanner
        self.actions = shadow_actions(actions) if shadow else dict(actions)
        self.system_prompt_min_words = system_prompt_min_words
        self.canary = canary
        self.holdback = holdback

    def prepare(self, route: str, slots: list[TextSlot],
                body: dict[str, object] | None = None) -> ResponseScan | None:
        """The scan for one reply (None for embeddings, which carry no text back). With
        `canary`, a canary is put into the first system message of `body`."""
        if route == "embeddings":
            return None
        scanners: list[Scanner] = [self.scanner]
        system = "\n".join(s.text for s in slots if s.trust == TRUSTED and
                           s.role in ("system", "developer") and
                           s.path.startswith(("messages[", "system", "instructions", "input[")))
        if system.strip():
            scanners.append(SystemPromptLeak(system, min_words=self.system_prompt_min_words))
        if self.canary and body is not None:
            _place_canary(body, scanners)
        scanner: Scanner = scanners[0] if len(scanners) == 1 else CombinedScanner(*scanners)
        return ResponseScan(scanner, self.actions, self.holdback)


def _place_canary(body: dict[str, object], scanners: list[Scanner]) -> bool:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "developer") \
                and isinstance(message.get("content"), str):
            canary = make_canary()
            message["content"] = insert_canary(message["content"], canary)
            scanners.append(CanaryScanner(canary))
            return True
    return False
