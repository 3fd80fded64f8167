"""Apply the pure guards to a request and its response, by policy, with metrics and logs.

The guards themselves (sidecar/guards/) only compute; this module decides: block (raise),
flag (count and log), shadow (count as blocked, change nothing) or modify the body.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from sidecar.errors import InputTooLong, InvalidRequest, PromptInjectionDetected
from sidecar.guards.injection import (
    InjectionDetector,
    InjectionResult,
    content_text,
    default_detector,
)
from sidecar.guards.leaks import CanaryScanner, SystemPromptLeak, insert_canary, make_canary
from sidecar.guards.redact import CombinedScanner, OutputDecision, OutputScanner, Scanner, apply_actions
from sidecar.guards.sanitize import sanitize_messages, sanitize_text
from sidecar.guards.stream import StreamRedactor
from sidecar.guards.validate import InputLimits, InputRejected, estimate_tokens, validate_chat
from sidecar.log import log_fields
from sidecar.metrics import Metrics
from sidecar.model import Finding
from sidecar.proxy.context import RequestContext
from sidecar.proxy.openai import ParsedRequest
from sidecar.settings import InputSettings, OutputSettings

log = logging.getLogger("sidecar.guards")
VERDICT_CACHE_SIZE = 20_000  # injection verdicts kept by message content (~2 MB)


def _texts(value: Any) -> Iterable[str]:
    """The strings of a completions `prompt` or an embeddings `input`."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield item


class InputGuard:
    """Validation, sanitizing, injection detection and optional PII redaction of requests."""

    def __init__(self, settings: InputSettings, metrics: Metrics, redactor: OutputScanner) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = InputLimits(max_messages=settings.max_messages,
                                  max_chars_per_message=settings.max_chars_per_message,
                                  max_chars_per_request=settings.max_chars_per_request,
                                  max_tokens_per_request=settings.max_tokens_per_request)
        self.detector: InjectionDetector | None = None
        if settings.injection_action != "off":
            base = default_detector()
            self.detector = base if base.threshold == settings.injection_threshold else \
                InjectionDetector(threshold=settings.injection_threshold)
        self.roles = frozenset(settings.injection_roles)
        self._verdicts: OrderedDict[bytes, InjectionResult] = OrderedDict()
        self.redactor = redactor
        self._validate_timer = metrics.guard_duration.labels("validate_sanitize")
        self._injection_timer = metrics.guard_duration.labels("injection")

    def check(self, parsed: ParsedRequest, ctx: RequestContext) -> bool:
        """Validate and guard the body in place; True when the body changed (re-encode it)."""
        started = perf_counter()
        body = parsed.body
        changed = False
        if parsed.route == "chat":
            messages = body["messages"]
            try:
                validate_chat(messages, self.limits)
            except InputRejected as exc:
                raise (InputTooLong if exc.code == "input_too_long" else InvalidRequest)(exc.message) \
                    from None
            if self.settings.sanitize:
                messages, changed = sanitize_messages(messages)
                if changed:
                    body["messages"] = messages
        else:
            field = "prompt" if parsed.route == "completions" else "input"
            self._check_plain(body, field)
            if self.settings.sanitize and parsed.route == "completions":
                changed = self._sanitize_plain(body, field)
        if changed:
            self.metrics.sanitized.inc()
        self._validate_timer.observe(perf_counter() - started)
        if self.detector is not None and parsed.route != "embeddings":
            self._injection(parsed, ctx)
        if self.settings.redact_pii and parsed.route == "chat":
            changed = self._redact_user_text(body) or changed
        return changed

    def _check_plain(self, body: dict[str, Any], field: str) -> None:
        value = body[field]
        items = [value] if isinstance(value, str) else value
        if len(items) > 2048:
            raise InvalidRequest(f"Field '{field}' has more than 2048 items.")
        chars = sum(len(t) for t in _texts(value))
        if chars > self.limits.max_chars_per_request:
            raise InputTooLong(f"Field '{field}' is longer than {self.limits.max_chars_per_request} "
                               "characters.")
        tokens = sum(estimate_tokens(t) for t in _texts(value))
        if tokens > self.limits.max_tokens_per_request:
            raise InputTooLong(f"Field '{field}' is estimated at more than "
                               f"{self.limits.max_tokens_per_request} tokens.")

    def _sanitize_plain(self, body: dict[str, Any], field: str) -> bool:
        value = body[field]
        if isinstance(value, str):
            clean = sanitize_text(value)
            body[field] = clean
            return clean is not value
        if isinstance(value, list):
            cleaned = [sanitize_text(v) if isinstance(v, str) else v for v in value]
            if any(a is not b for a, b in zip(cleaned, value, strict=True)):
                body[field] = cleaned
                return True
        return False

    def _injection(self, parsed: ParsedRequest, ctx: RequestContext) -> None:
        assert self.detector is not None
        started = perf_counter()
        result: InjectionResult | None
        if parsed.route == "chat":
            result = None
            for index, message in enumerate(parsed.body["messages"]):
                if not isinstance(message, dict) or message.get("role") not in self.roles:
                    continue
                text = content_text(message.get("content"))
                if text:
                    scored = self._score(text)
                    if result is None or scored.score > result.score:
                        result = InjectionResult(scored.score, scored.categories, index,
                                                 scored.detected)
        else:
            result = max((self._score(t) for t in _texts(parsed.body.get("prompt"))),
                         key=lambda r: r.score, default=None)
        self._injection_timer.observe(perf_counter() - started)
        if result is None or not result.detected:
            return
        fields = {"request_id": ctx.request_id, "key_id": ctx.key_id, "route": ctx.route,
                  "score": result.score, "categories": list(result.categories),
                  "message_index": result.message_index}
        if self.settings.injection_action == "flag":
            self.metrics.blocked.labels(ctx.route, "flag:prompt_injection_detected").inc()
            log_fields(log, logging.WARNING, "prompt injection flagged", **fields)
        elif self.settings.injection_mode == "shadow":
            self.metrics.blocked.labels(ctx.route, "shadow:prompt_injection_detected").inc()
            log_fields(log, logging.WARNING, "prompt injection (shadow: forwarded)", **fields)
        else:
            log_fields(log, logging.WARNING, "prompt injection blocked", **fields)
            raise PromptInjectionDetected()

    def _score(self, text: str) -> InjectionResult:
        """The detector's verdict on one text, remembered by content: chat apps resend the whole
        history with every turn, so only the newest messages cost a scan."""
        assert self.detector is not None
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        cached = self._verdicts.get(digest)
        if cached is not None:
            self._verdicts.move_to_end(digest)
            return cached
        result = self.detector.score_text(text)
        self._verdicts[digest] = result
        if len(self._verdicts) > VERDICT_CACHE_SIZE:
            self._verdicts.popitem(last=False)
        return result

    def _redact_user_text(self, body: dict[str, Any]) -> bool:
        changed = False
        for message in body["messages"]:
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                decision = apply_actions(content, self.redactor.scan(content), {"*": "redact"})
                if decision.findings:
                    message["content"] = decision.text
                    changed = True
                    count_findings(self.metrics, decision.findings)
        return changed


def count_findings(metrics: Metrics, findings: Sequence[Finding]) -> None:
    if not findings:
        return  # the usual case: no Counter to build
    for kind, n in Counter(f.kind for f in findings).items():
        metrics.redactions.labels(kind).inc(n)


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


class OutputGuard:
    """Builds the per-request output scan; the shared scanner is compiled once."""

    def __init__(self, settings: OutputSettings, provider_key: str, admin_token: str) -> None:
        self.settings = settings
        # Our own key format is in the shared secret table (secret:sidecar, same shape as
        # auth.keyformat.KEY_REGEX; a test keeps the two in step).
        self.scanner = OutputScanner(provider_key=provider_key or None,
                                     admin_token=admin_token or None, ip=settings.detect_ip)
        actions = dict(settings.actions)
        if settings.mode == "shadow":
            actions = {kind: ("flag" if action != "off" else "off") for kind, action in actions.items()}
            actions.setdefault("*", "flag")
        self.actions = actions

    def prepare(self, parsed: ParsedRequest) -> tuple[ResponseScan | None, bool]:
        """The scan for this request's response (None when output scanning is off), and whether
        a canary was placed in the system message (then the body has changed)."""
        placed = False
        if not self.settings.scan or parsed.route == "embeddings":
            return None, placed
        scanners: list[Scanner] = [self.scanner]
        if parsed.route == "chat":
            system = [m for m in parsed.body["messages"]
                      if isinstance(m, dict) and m.get("role") in ("system", "developer")]
            system_text = "\n".join(content_text(m.get("content")) for m in system)
            if system_text.strip():
                scanners.append(SystemPromptLeak(system_text,
                                                 min_words=self.settings.system_prompt_min_words))
            if self.settings.canary and system and isinstance(system[0].get("content"), str):
                canary = make_canary()
                system[0]["content"] = insert_canary(system[0]["content"], canary)
                scanners.append(CanaryScanner(canary))
                placed = True
        scanner: Scanner = scanners[0] if len(scanners) == 1 else CombinedScanner(*scanners)
        return ResponseScan(scanner, self.actions, self.settings.holdback_chars), placed
