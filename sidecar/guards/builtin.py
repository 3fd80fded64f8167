"""The sidecar's own input guards, as `Guard`s over a `RequestView`'s text slots.

validate (size and count limits) → injection (every slot the policy does not trust; hidden
payloads are judged before anything strips them) → sanitize (invisible, bidi and control
characters) → redact_input (secrets and PII in user text, off by default). Each is pure and
built once per policy; the injection guard remembers verdicts by content, because chat apps
resend the whole history with every turn.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping

from sidecar.guards.base import RequestView, Stage, allow, block, modify
from sidecar.guards.injection import InjectionDetector, InjectionResult
from sidecar.guards.injection_context import NOTHING, Guarded
from sidecar.guards.redact import Scanner, apply_actions
from sidecar.guards.sanitize import sanitize_text
from sidecar.guards.validate import InputLimits, estimate_tokens
from sidecar.model import DATA, TRUSTED, Finding, Verdict

INPUT_TOO_LONG = "input_too_long"
INJECTION = "prompt_injection_detected"
SANITIZED = "sanitized"
REDACTED = "redacted"
VERDICT_CACHE_SIZE = 20_000  # injection verdicts kept by content (~2 MB)


class ValidateGuard:
    """Message count, characters per message and per request, estimated tokens per request."""

    name = "validate"
    stage = Stage.INPUT

    def __init__(self, limits: InputLimits) -> None:
        self.limits = limits

    def check(self, subject: RequestView) -> Verdict:
        limits = self.limits
        if 0 < limits.max_messages < subject.message_count:
            return _too_long(f"Too many messages: the limit is {limits.max_messages}.")
        per_message: dict[int, int] = {}
        total_chars = total_tokens = 0
        for slot, group in zip(subject.slots, subject.groups, strict=True):
            n = len(slot.text)
            total_chars += n
            total_tokens += estimate_tokens(slot.text)
            if group >= 0:
                per_message[group] = per_message.get(group, 0) + n
        for group, chars in per_message.items():
            if 0 < limits.max_chars_per_message < chars:
                return _too_long(f"messages[{group}] is longer than {limits.max_chars_per_message} "
                                 "characters.")
        if 0 < limits.max_chars_per_request < total_chars:
            return _too_long(f"The request text is longer than {limits.max_chars_per_request} "
                             "characters.")
        if 0 < limits.max_tokens_per_request < total_tokens:
            return _too_long(f"The request text is estimated above {limits.max_tokens_per_request} "
                             "tokens.")
        return allow()


def _too_long(detail: str) -> Verdict:
    return Verdict("block", reason=INPUT_TOO_LONG, detail=detail)


class SanitizeGuard:
    """Strips characters that hide text from people but not from models, in every slot."""

    name = "sanitize"
    stage = Stage.INPUT

    def check(self, subject: RequestView) -> Verdict:
        edits = []
        for index, slot in enumerate(subject.slots):
            clean = sanitize_text(slot.text)
            if clean is not slot.text:
                edits.append((index, clean))
        return modify(SANITIZED, edits) if edits else allow()


class InjectionGuard:
    """Prompt-injection and jailbreak detection over every slot the policy does not trust:
    the trusted slots are context (what the system prompt guards), data slots are judged as
    data. Verdicts are remembered by content when the context guards nothing (the usual
    request), because chat apps resend the whole history with every turn."""

    name = "injection"
    stage = Stage.INPUT

    def __init__(self, detector: InjectionDetector) -> None:
        self.detector = detector
        self._verdicts: OrderedDict[bytes, InjectionResult] = OrderedDict()

    def check(self, subject: RequestView) -> Verdict:
        slots = subject.slots
        trusted = [s.text for s in slots if s.trust == TRUSTED]
        ctx = self.detector.context_of(trusted) if trusted else NOTHING
        best: InjectionResult | None = None
        best_slot = -1
        for index, slot in enumerate(slots):
            if slot.trust == TRUSTED or not slot.text:
                continue
            result = self.score(slot.text, slot.trust == DATA, ctx)
            if best is None or result.score > best.score:
                best, best_slot = result, index
        if best is None or not best.detected:
            return allow()
        return block(INJECTION, best.score, best.categories, best_slot)

    def score(self, text: str, as_data: bool = False, ctx: Guarded = NOTHING) -> InjectionResult:
        """The detector's verdict on one text (cached by content when the context is empty)."""
        if ctx != NOTHING:
            return self.detector.judge_text(text, as_data, ctx)
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16,
                                 person=b"data" if as_data else b"turn").digest()
        cached = self._verdicts.get(digest)
        if cached is not None:
            self._verdicts.move_to_end(digest)
            return cached
        result = self.detector.judge_text(text, as_data)
        self._verdicts[digest] = result
        if len(self._verdicts) > VERDICT_CACHE_SIZE:
            self._verdicts.popitem(last=False)
        return result


class RedactInputGuard:
    """Secrets and PII in the end user's text redacted before it leaves (off by default)."""

    name = "redact_input"
    stage = Stage.INPUT

    def __init__(self, scanner: Scanner, roles: frozenset[str] = frozenset({"user"}),
                 actions: Mapping[str, str] | None = None) -> None:
        self.scanner = scanner
        self.roles = roles
        self.actions = actions or {"*": "redact"}

    def check(self, subject: RequestView) -> Verdict:
        edits: list[tuple[int, str]] = []
        findings: list[Finding] = []
        for index, slot in enumerate(subject.slots):
            if slot.role not in self.roles:
                continue
            found = self.scanner.scan(slot.text)
            if found:
                decision = apply_actions(slot.text, found, self.actions)
                findings.extend(decision.findings)
                if decision.text != slot.text:
                    edits.append((index, decision.text))
        if not edits:
            return allow()
        return Verdict("modify", reason=REDACTED, edits=tuple(edits), findings=tuple(findings))
