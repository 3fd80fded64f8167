"""What the sidecar does to a provider's answer: usage capture and output scanning.

One `ResponseProcessor` per request. For whole JSON bodies it scans every choice at once; for
SSE it runs one `StreamRedactor` per choice (and per tool call's arguments), so a secret split
across any number of chunks is still caught while text flows with a bounded hold-back. It also
reads the provider's `usage` (and drops the usage chunk the sidecar asked for on the client's
behalf when the client did not ask for it).
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.errors import OutputBlocked
from sidecar.guards.stream import StreamRedactor
from sidecar.metrics import Metrics
from sidecar.model import Finding
from sidecar.proxy.guarding import ResponseScan, count_findings
from sidecar.proxy.openai import event_data

_DONE = b"[DONE]"


class ResponseProcessor:
    """Usage and output guards for one response, plain or streamed."""

    def __init__(self, route: str, scan: ResponseScan | None, metrics: Metrics,
                 strip_usage_chunk: bool = False) -> None:
        self.route = route
        self.scan = scan
        self.metrics = metrics
        self.strip_usage_chunk = strip_usage_chunk
        self.usage_total: int | None = None
        self.usage_prompt = 0
        self.usage_completion = 0
        self.streamed_chars = 0
        self.blocked = False
        self.noting = False  # record the response model and finish reasons (for traces)
        self.response_model = ""
        self.finish_reasons: list[str] = []
        self._redactors: dict[tuple[int, int], StreamRedactor] = {}
        self._seen: dict[tuple[int, int], int] = {}
        self._template: dict[str, Any] = {}

    # -- whole bodies ---------------------------------------------------------------------------
    def on_json(self, obj: Any) -> bool:
        """Scan a whole response in place; True if it changed. Raises OutputBlocked to block."""
        if not isinstance(obj, dict):
            return False
        self._read_usage(obj)
        if self.noting:
            self._note_response(obj)
        if self.scan is None:
            return False
        changed = False
        findings: list[Finding] = []
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            for holder, field, _ in self._text_fields(choice, "message"):
                decision = self.scan.whole(holder[field])
                findings.extend(decision.findings)
                if decision.blocked:
                    count_findings(self.metrics, findings)
                    raise OutputBlocked()
                if decision.text != holder[field]:
                    holder[field] = decision.text
                    changed = True
        count_findings(self.metrics, findings)
        return changed

    def _text_fields(self, choice: dict[str, Any], key: str) -> list[tuple[dict[str, Any], str, int]]:
        """(dict, field, slot) for the model text in one choice: content or text (slot 0) and each
        tool call's arguments (slot 1000 + the call's index)."""
        out: list[tuple[dict[str, Any], str, int]] = []
        if isinstance(choice.get("text"), str):
            out.append((choice, "text", 0))
        part = choice.get(key)
        if isinstance(part, dict):
            if isinstance(part.get("content"), str):
                out.append((part, "content", 0))
            for n, call in enumerate(part.get("tool_calls") or ()):
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    index = call.get("index", n)
                    out.append((function, "arguments", 1000 + (index if isinstance(index, int) else n)))
        return out

    def _read_usage(self, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            total = usage.get("total_tokens")
            if isinstance(total, int) and not isinstance(total, bool) and total >= 0:
                self.usage_total = total
                prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
                self.usage_prompt = prompt if isinstance(prompt, int) and prompt >= 0 else 0
                self.usage_completion = completion if isinstance(completion, int) and completion >= 0 else 0

    def _note_response(self, obj: dict[str, Any]) -> None:
        """The response's model and each choice's finish reason (names, never text)."""
        model = obj.get("model")
        if isinstance(model, str):
            self.response_model = model[:256]
        for choice in obj.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str) and len(self.finish_reasons) < 16:
                self.finish_reasons.append(reason[:64])

    # -- streams --------------------------------------------------------------------------------
    def on_event(self, event: bytes) -> bytes:
        """The bytes to send for one upstream SSE event (b"" to drop it)."""
        data = event_data(event)
        if data is None:
            return event + b"\n\n"
        if data == _DONE:
            return self.flush() + event + b"\n\n"
        obj = orjson.loads(data)  # ValueError on garbage: the relay ends the stream in error
        if not isinstance(obj, dict):
            raise ValueError("SSE data is not a JSON object")
        self._read_usage(obj)
        if self.noting:
            self._note_response(obj)
        choices = obj.get("choices")
        if self.strip_usage_chunk and obj.get("usage") and not choices:
            return b""
        if not isinstance(choices, list) or not choices:
            return event + b"\n\n"
        self._template = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
        if self.scan is None:
            self.streamed_chars += sum(len(h[f]) for c in choices if isinstance(c, dict)
                                       for h, f, _ in self._text_fields(c, "delta"))
            return event + b"\n\n"
        for choice in choices:
            if isinstance(choice, dict):
                self._redact_choice(choice)
        if self.blocked:
            return b""
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    def _redact_choice(self, choice: dict[str, Any]) -> None:
        assert self.scan is not None
        index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
        for holder, field, slot_id in self._text_fields(choice, "delta"):
            slot = (index, slot_id)
            redactor = self._redactors.get(slot)
            if redactor is None:
                redactor = self._redactors[slot] = self.scan.stream()
            self.streamed_chars += len(holder[field])
            holder[field] = redactor.feed(holder[field])
            self._note(slot, redactor)
        if choice.get("finish_reason") is not None:
            for slot in sorted(s for s in self._redactors if s[0] == index):
                self._append(choice, slot[1], self._finish(slot))

    def _append(self, choice: dict[str, Any], slot_id: int, text: str) -> None:
        """Add flushed text to a finishing choice (its content, text or tool-call arguments)."""
        if not text or self.blocked:
            return
        if self.route != "chat":
            choice["text"] = (choice.get("text") or "") + text
            return
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice["delta"] = {}
        if slot_id < 1000:
            delta["content"] = (delta.get("content") or "") + text
        else:
            calls = delta.setdefault("tool_calls", [])
            calls.append({"index": slot_id - 1000, "function": {"arguments": text}})

    def _finish(self, slot: tuple[int, int]) -> str:
        redactor = self._redactors.pop(slot)
        text = redactor.finish()
        self._note(slot, redactor)
        self._seen.pop(slot, None)
        return text

    def _note(self, slot: tuple[int, int], redactor: StreamRedactor) -> None:
        if redactor.blocked:
            self.blocked = True
        seen = self._seen.get(slot, 0)
        if len(redactor.findings) > seen:
            count_findings(self.metrics, redactor.findings[seen:])
            self._seen[slot] = len(redactor.findings)

    def flush(self) -> bytes:
        """Text still held back when the stream ends, as one last chunk per choice."""
        if not self._redactors:
            return b""
        out = []
        for slot in sorted(self._redactors):
            choice: dict[str, Any] = {"index": slot[0], "finish_reason": None}
            self._append(choice, slot[1], self._finish(slot))
            if len(choice) > 2:
                out.append(b"data: " + orjson.dumps({**self._template, "choices": [choice]}) + b"\n\n")
        return b"".join(out)
