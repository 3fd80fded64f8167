"""What the sidecar does to a provider's answer: usage capture and output scanning of every
text slot, whole or streamed.

One `ResponseProcessor` per request. A whole JSON reply has every string scanned except the
fields that hold ids and enums (`_NOT_TEXT`): message content (string or parts), refusals,
tool- and function-call arguments, reasoning text, audio transcripts, annotations and any
field this module does not know. Logprob tokens are scanned as the text they spell, and a
token inside a finding is replaced together with its bytes and alternatives. In a stream, the
fields that arrive in pieces (`_STREAMED`) each get a `StreamRedactor` per choice, so a secret
split across any number of chunks is still caught while text flows with a bounded hold-back;
logprob entries are held back with the text they belong to; every other string is scanned
per event, and so are SSE comment lines. It also reads the provider's `usage` (and drops the
usage chunk the sidecar asked for on the client's behalf when the client did not ask for it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from sidecar.errors import OutputBlocked, SidecarError
from sidecar.guards.base import BLOCK, MODIFY, ResponseView
from sidecar.guards.output import ResponseScan
from sidecar.guards.pipeline import SHADOW, Step
from sidecar.guards.redact import resolve_action
from sidecar.guards.stream import StreamRedactor
from sidecar.metrics import Metrics
from sidecar.model import UNTRUSTED, Finding, TextSlot
from sidecar.proxy.guarding import count_findings, reason_label
from sidecar.proxy.openai import DONE_EVENT, encode_event, event_data

_DONE = b"[DONE]"
# Keys whose string values are ids, enums or timestamps the provider sets, never model text.
_NOT_TEXT = frozenset({"id", "object", "created", "model", "system_fingerprint", "service_tier",
                       "role", "finish_reason", "index", "type", "tool_call_id", "usage",
                       "logprobs", "expires_at", "status", "created_at", "encoding_format",
                       # Anthropic and Responses ids, enums and opaque blobs
                       "signature", "encrypted_content", "stop_reason", "tool_use_id", "call_id",
                       "previous_response_id", "item_id", "media_type"})
# Delta fields a provider streams in pieces: each is redacted incrementally per choice.
_STREAMED = ("content", "refusal", "reasoning_content", "reasoning")
_Place = tuple[Any, Any, str]  # (container, key, path)
_CHOICES = frozenset({"choices"})
_TEXT = frozenset({"text"})


def string_places(value: Any, path: str = "", skip: frozenset[str] = frozenset()) -> Iterator[_Place]:
    """Every model-text string under `value`: (container, key, path); keys in `skip` are left
    out at the top level only."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            audio = where.endswith("audio")
            top = item is value
            for key, sub in item.items():
                if key in _NOT_TEXT or (audio and key == "data") or (top and key in skip):
                    continue
                at = f"{where}.{key}" if where else key
                if isinstance(sub, str):
                    if sub:
                        yield item, key, at
                elif isinstance(sub, dict | list):
                    stack.append((sub, at))
        elif isinstance(item, list):
            for n, sub in enumerate(item):
                if isinstance(sub, str):
                    if sub:
                        yield item, n, f"{where}[{n}]"
                elif isinstance(sub, dict | list):
                    stack.append((sub, f"{where}[{n}]"))


class _Tokens:
    """Logprob entries of one choice's stream, held until their text has been judged."""

    __slots__ = ("queue", "redactor", "total")

    def __init__(self, redactor: StreamRedactor) -> None:
        self.redactor = redactor
        self.queue: list[tuple[dict[str, Any], int, int]] = []
        self.total = 0

    def feed(self, entries: list[Any]) -> None:
        for entry in entries:
            token = entry.get("token") if isinstance(entry, dict) else None
            text = token if isinstance(token, str) else ""
            self.queue.append((entry if isinstance(entry, dict) else {}, self.total,
                               self.total + len(text)))
            self.total += len(text)
            self.redactor.feed(text)

    def release(self, actions: Any, everything: bool) -> list[dict[str, Any]]:
        """Entries whose text is settled, redacted where a finding covers them."""
        if everything:
            self.redactor.finish()
        settled = self.total if everything else self.redactor.settled
        out = []
        while self.queue and self.queue[0][2] <= settled:
            entry, start, end = self.queue.pop(0)
            _mark(entry, start, end, self.redactor.findings, actions)
            out.append(entry)
        return out


def _mark(entry: dict[str, Any], start: int, end: int, findings: Sequence[Finding],
          actions: Any) -> None:
    """Redact one logprob entry (token, bytes, alternatives) if a redacted finding covers it."""
    for f in findings:
        if f.start < end and start < f.end and resolve_action(f.kind, actions) in ("redact", "block"):
            token = f"[REDACTED:{f.kind}]" if start <= f.start < end else ""
            _set_token(entry, token)
            for alt in entry.get("top_logprobs") or ():
                if isinstance(alt, dict):
                    _set_token(alt, token)
            return


def _set_token(entry: dict[str, Any], token: str) -> None:
    entry["token"] = token
    if "bytes" in entry:
        entry["bytes"] = list(token.encode("utf-8"))


class ResponseProcessor:
    """Usage and output guards for one response, plain or streamed."""

    def __init__(self, route: str, scan: ResponseScan | None, metrics: Metrics,
                 strip_usage_chunk: bool = False, output_steps: Sequence[Step] = ()) -> None:
        self.route = route
        self.scan = scan
        self.metrics = metrics
        self.strip_usage_chunk = strip_usage_chunk
        self.output_steps = output_steps
        self.usage_total: int | None = None
        self.usage_prompt = 0
        self.usage_completion = 0
        self.streamed_chars = 0
        self.blocked = False
        self.ended = False  # the provider's last event was seen
        self.noting = False  # record the response model and finish reasons (for traces)
        self.response_model = ""
        self.finish_reasons: list[str] = []
        self._redactors: dict[tuple[int, str], StreamRedactor] = {}
        self._tokens: dict[tuple[int, str], _Tokens] = {}
        self._seen: dict[tuple[int, str], int] = {}
        self._template: dict[str, Any] = {}

    # -- whole bodies ---------------------------------------------------------------------------
    def on_json(self, obj: Any) -> bool:
        """Scan a whole response in place; True if it changed. Raises OutputBlocked to block."""
        if not isinstance(obj, dict):
            return False
        self._read_usage(obj)
        if self.noting:
            self._note_response(obj)
        changed = False
        if self.scan is not None:
            changed = self._scan_places(list(string_places(obj)))
            for choice in obj.get("choices") or ():
                if isinstance(choice, dict):
                    changed = self._scan_logprobs(choice.get("logprobs")) or changed
        if self.output_steps:
            changed = self._plugin_guards(obj) or changed
        return changed

    def _scan_places(self, places: list[_Place]) -> bool:
        assert self.scan is not None
        changed = False
        findings: list[Finding] = []
        for holder, key, _ in places:
            decision = self.scan.whole(holder[key])
            findings.extend(decision.findings)
            if decision.blocked:
                count_findings(self.metrics, findings)
                raise OutputBlocked()
            if decision.text != holder[key]:
                holder[key] = decision.text
                changed = True
        count_findings(self.metrics, findings)
        return changed

    def _scan_logprobs(self, logprobs: Any) -> bool:
        """Chat logprobs (`content`, `refusal` entry lists) and completions logprobs (`tokens`):
        scanned as the text their tokens spell."""
        if not isinstance(logprobs, dict):
            return False
        assert self.scan is not None
        changed = False
        for key in ("content", "refusal"):
            entries = logprobs.get(key)
            if isinstance(entries, list) and entries:
                tokens = _Tokens(self.scan.stream())
                tokens.feed(entries)
                kept = tokens.release(self.scan.actions, everything=True)
                self._count_stream(tokens.redactor, (-1, key))
                if tokens.redactor.blocked:
                    raise OutputBlocked()
                changed = changed or bool(tokens.redactor.findings)
                logprobs[key] = kept
        names = logprobs.get("tokens")
        if isinstance(names, list) and names and all(isinstance(t, str) for t in names):
            entries = [{"token": t} for t in names]
            tokens = _Tokens(self.scan.stream())
            tokens.feed(entries)
            tokens.release(self.scan.actions, everything=True)
            if tokens.redactor.blocked:
                raise OutputBlocked()
            if tokens.redactor.findings:
                logprobs["tokens"] = [e["token"] for e in entries]
                tops = logprobs.get("top_logprobs")
                if isinstance(tops, list):  # alternatives keyed by token: the redacted token alone
                    for n, top in enumerate(tops[:len(entries)]):
                        if isinstance(top, dict) and entries[n]["token"] != names[n]:
                            tops[n] = {entries[n]["token"]: next(iter(top.values()), None)}
                changed = True
        return changed

    def _plugin_guards(self, obj: dict[str, Any]) -> bool:
        """Plug-in OUTPUT guards over the (already redacted) whole reply."""
        places = list(string_places(obj))
        view = ResponseView(self.route, tuple(TextSlot(p, "assistant", UNTRUSTED, h[k])
                                              for h, k, p in places))
        changed = False
        for step in self.output_steps:
            verdict = step.guard.check(view)
            if verdict.action in ("allow",):
                continue
            if step.mode == SHADOW or step.action == "flag" or verdict.action == "flag":
                outcome = SHADOW if step.mode == SHADOW else "flag"
                self.metrics.blocked.labels(self.route, f"{outcome}:{reason_label(verdict.reason)}").inc()
                continue
            if verdict.action == BLOCK:
                raise OutputBlocked()
            if verdict.action == MODIFY:
                for index, text in verdict.edits:
                    holder, key, _ = places[index]
                    holder[key] = text
                    changed = True
        return changed

    def error_event(self, error: SidecarError, request_id: str) -> bytes:
        """The SSE event that ends a stream in error: an OpenAI error object, then `[DONE]`."""
        return encode_event(error.body(request_id)) + DONE_EVENT

    def error_shape(self, error: dict[str, Any]) -> dict[str, Any]:
        """A provider's (scrubbed) error as this API's clients expect it."""
        return error

    def scrub_error(self, body: dict[str, Any]) -> None:
        """A provider's error body gets the full secret and PII scan (redacting, never blocking:
        the client must still learn that the provider refused)."""
        if self.scan is None:
            return
        for holder, key, _ in string_places(body):
            decision = self.scan.whole(holder[key])
            count_findings(self.metrics, decision.findings)
            if decision.findings:
                holder[key] = _redact_all(holder[key], decision.findings)

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
            return self._other_lines(event) + b"\n\n"
        if data == _DONE:
            self.ended = True
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
        if self.scan is None:
            if isinstance(choices, list):
                self.streamed_chars += sum(len(h[k]) for c in choices if isinstance(c, dict)
                                           for h, k, _ in string_places(c))
            return event + b"\n\n"
        if isinstance(choices, list) and choices:
            self._template = {k: obj[k] for k in ("id", "object", "created", "model") if k in obj}
            for choice in choices:
                if isinstance(choice, dict):
                    self._redact_choice(choice)
                    if self.blocked:
                        return b""
        rest = list(string_places(obj, skip=_CHOICES))
        if rest:
            self._scan_places(rest)
        prefix = b""
        if not event.startswith(b"data:"):
            prefix = self._other_lines(event)
            prefix = prefix + b"\n" if prefix else b""
        return prefix + b"data: " + orjson.dumps(obj) + b"\n\n"

    def _other_lines(self, event: bytes) -> bytes:
        """An event's non-data lines: `event:`/`id:`/`retry:` kept, comments scanned."""
        lines = [line for line in event.split(b"\n") if not line.startswith(b"data:")]
        if self.scan is None:
            return b"\n".join(lines)
        out = []
        for line in lines:
            if line.startswith(b":") and len(line) > 1:
                text = line[1:].decode("utf-8", "replace")
                decision = self.scan.whole(text)
                if decision.findings:
                    count_findings(self.metrics, decision.findings)
                    line = b":" + _redact_all(text, decision.findings).encode()
            out.append(line)
        return b"\n".join(out)

    def _streamed_fields(self, choice: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
        """(holder, key, slot name) of each piece of incrementally streamed text in a choice."""
        if isinstance(choice.get("text"), str):
            yield choice, "text", "text"
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return
        for key in _STREAMED:
            if isinstance(delta.get(key), str):
                yield delta, key, key
        for n, call in enumerate(delta.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                index = call.get("index", n)
                yield function, "arguments", f"tool:{index if isinstance(index, int) else n}"
        function_call = delta.get("function_call")
        if isinstance(function_call, dict) and isinstance(function_call.get("arguments"), str):
            yield function_call, "arguments", "function_call"
        audio = delta.get("audio")
        if isinstance(audio, dict) and isinstance(audio.get("transcript"), str):
            yield audio, "transcript", "audio"

    def _redact_choice(self, choice: dict[str, Any]) -> None:
        assert self.scan is not None
        index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
        streamed = list(self._streamed_fields(choice))
        done = {(id(holder), key) for holder, key, _ in streamed}
        for holder, key, name in streamed:
            slot = (index, name)
            redactor = self._redactors.get(slot)
            if redactor is None:
                redactor = self._redactors[slot] = self.scan.stream()
            self.streamed_chars += len(holder[key])
            holder[key] = redactor.feed(holder[key])
            self._count_stream(redactor, slot)
        # Everything else in the choice (names, annotations, unknown fields) is whole per event.
        others = [p for p in string_places(choice, skip=_TEXT)
                  if (id(p[0]), p[1]) not in done]
        if others:
            self._scan_places(others)
        logprobs = choice.get("logprobs")
        finishing = choice.get("finish_reason") is not None
        if isinstance(logprobs, dict):
            for key in ("content", "refusal"):
                entries = logprobs.get(key)
                if isinstance(entries, list):
                    logprobs[key] = self._hold_tokens((index, key), entries, finishing)
        if finishing:
            for slot in sorted(s for s in self._redactors if s[0] == index):
                self._append(choice, slot[1], self._finish(slot))

    def _hold_tokens(self, slot: tuple[int, str], entries: list[Any], finishing: bool) -> list[Any]:
        assert self.scan is not None
        tokens = self._tokens.get(slot)
        if tokens is None:
            tokens = self._tokens[slot] = _Tokens(self.scan.stream())
        tokens.feed(entries)
        out = tokens.release(self.scan.actions, everything=finishing)
        self._count_stream(tokens.redactor, (slot[0], "logprobs:" + slot[1]))
        if finishing:
            del self._tokens[slot]
        return out

    def _append(self, choice: dict[str, Any], name: str, text: str) -> None:
        """Add flushed text to a finishing choice, in the field it was held back from."""
        if not text or self.blocked:
            return
        if name == "text":
            choice["text"] = (choice.get("text") or "") + text
            return
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            delta = choice["delta"] = {}
        if name.startswith("tool:"):
            calls = delta.setdefault("tool_calls", [])
            calls.append({"index": int(name[5:]), "function": {"arguments": text}})
        elif name == "function_call":
            call = delta.setdefault("function_call", {})
            call["arguments"] = (call.get("arguments") or "") + text
        elif name == "audio":
            audio = delta.setdefault("audio", {})
            audio["transcript"] = (audio.get("transcript") or "") + text
        else:
            delta[name] = (delta.get(name) or "") + text

    def _finish(self, slot: tuple[int, str]) -> str:
        redactor = self._redactors.pop(slot)
        text = redactor.finish()
        self._count_stream(redactor, slot)
        self._seen.pop(slot, None)
        return text

    def _count_stream(self, redactor: StreamRedactor, slot: tuple[int, str]) -> None:
        if redactor.blocked:
            self.blocked = True
        seen = self._seen.get(slot, 0)
        if len(redactor.findings) > seen:
            count_findings(self.metrics, redactor.findings[seen:])
            self._seen[slot] = len(redactor.findings)

    def flush(self) -> bytes:
        """Text and logprobs still held back when the stream ends, as one last chunk per choice."""
        if not self._redactors and not self._tokens:
            return b""
        out = []
        indexes = sorted({s[0] for s in self._redactors} | {s[0] for s in self._tokens})
        for index in indexes:
            choice: dict[str, Any] = {"index": index, "finish_reason": None}
            for slot in sorted(s for s in self._redactors if s[0] == index):
                self._append(choice, slot[1], self._finish(slot))
            held = {s[1]: self._hold_tokens(s, [], True)
                    for s in sorted(s for s in self._tokens if s[0] == index)}
            if any(held.values()):
                choice["logprobs"] = held
            if len(choice) > 2 and not self.blocked:
                out.append(b"data: " + orjson.dumps({**self._template, "choices": [choice]}) + b"\n\n")
        return b"".join(out)


def _redact_all(text: str, findings: Sequence[Finding]) -> str:
    """Every finding replaced, whatever its configured action (error bodies and comments are not
    the model's answer: nothing in them is worth a flag-only leak)."""
    parts: list[str] = []
    at = 0
    for f in findings:
        parts.append(text[at:f.start])
        parts.append(f"[REDACTED:{f.kind}]")
        at = f.end
    parts.append(text[at:])
    return "".join(parts)
