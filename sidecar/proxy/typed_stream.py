"""Output guards for streams whose events name their own type (Anthropic Messages, OpenAI
Responses): the shared machinery.

Each API maps its stream shape to named slots (`streamed()`: which field of which event is a
piece of which slot) and says where a slot ends (`closing()`). Every slot gets its own
`StreamRedactor`, so a secret split across any number of deltas is still caught while text
flows with a bounded hold-back; when a slot ends, the text it still holds is sent as one more
delta event of the API's own shape (`release_event()`), just before the event that ends it.
Every other string of an event is scanned whole, `event:` and `id:` lines are kept, comments
scanned. Usage is read from the API's own fields (`read_event()`), and `ended` turns true on
the API's last event, since these streams carry no `[DONE]`.

Anthropic Messages: `content_block_delta` events carry `text_delta`, `input_json_delta` and
`thinking_delta` pieces, one slot per content block index; `content_block_stop` (or the
message's end) releases what a slot held back. Usage: `message_start` gives the input tokens
(with cache reads and writes), `message_delta` the output tokens so far; `message_stop` ends it.

OpenAI Responses: every `response.*.delta` event with a string `delta` (output text, refusals,
function and custom tool call arguments, reasoning text and summaries, transcripts, ...) is a
piece of one slot per item and part; the matching `.done` event releases what the slot held
back and repeats the slot's text exactly as the client received it. Usage comes from
`response.usage` (`response.completed`, `.incomplete`, `.failed`), which also end the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from sidecar.errors import OutputBlocked, SidecarError
from sidecar.proxy.anthropic import error_object, error_type
from sidecar.proxy.guarding import count_findings
from sidecar.proxy.openai import event_data
from sidecar.proxy.response import ResponseProcessor, _Tokens, string_places

Streamed = tuple[dict[str, Any], str, str]  # (holder, key, slot name)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class TypedStreamProcessor(ResponseProcessor):
    """A `ResponseProcessor` for typed SSE events; subclasses describe one API's shape."""

    # True when the API repeats a slot's whole text after its deltas (Responses' `.done`
    # events): the text each slot sent is then kept until that event has been rewritten.
    repeats_text = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.emitted: dict[str, list[str]] = {}  # what each open slot has sent so far
        self.closed: dict[str, str] = {}  # the whole text a closed slot sent, until repeated

    # -- what a subclass describes --------------------------------------------------------------
    def streamed(self, obj: dict[str, Any]) -> Iterator[Streamed]:
        """The incrementally streamed text fields of one event."""
        raise NotImplementedError

    def closing(self, obj: dict[str, Any]) -> list[str]:
        """The open slots this event ends (their held-back text is released before it)."""
        raise NotImplementedError

    def release_event(self, slot: str, text: str) -> bytes:
        """One more delta event carrying `text` for `slot`, in the API's shape."""
        raise NotImplementedError

    def read_event(self, obj: dict[str, Any]) -> None:
        """Usage and the end of the stream, from one event."""
        raise NotImplementedError

    def error_payload(self, error: SidecarError, request_id: str) -> bytes:
        raise NotImplementedError

    # -- the machinery ---------------------------------------------------------------------------
    def on_event(self, event: bytes) -> bytes:
        data = event_data(event)
        if data is None:
            return self._other_lines(event) + b"\n\n"
        obj = orjson.loads(data)  # ValueError on garbage: the relay ends the stream in error
        if not isinstance(obj, dict):
            raise ValueError("SSE data is not a JSON object")
        self.read_event(obj)
        streamed = list(self.streamed(obj))
        if self.scan is None:
            self.streamed_chars += sum(len(holder[key]) for holder, key, _ in streamed)
            return event + b"\n\n"
        released = [self._release(slot) for slot in self.closing(obj)
                    if (0, slot) in self._redactors]
        done = {(id(holder), key) for holder, key, _ in streamed}
        for holder, key, name in streamed:
            redactor = self._redactors.get((0, name))
            if redactor is None:
                redactor = self._redactors[(0, name)] = self.scan.stream()
            self.streamed_chars += len(holder[key])
            holder[key] = redactor.feed(holder[key])
            if self.repeats_text:
                self.emitted.setdefault(name, []).append(holder[key])
            self._count_stream(redactor, (0, name))
        repeated = self.rewrite_done(obj)
        if repeated is not None:
            done.add((id(repeated[0]), repeated[1]))  # exactly the deltas sent: not rescanned
        self.token_lists(obj)
        rest = [p for p in string_places(obj) if (id(p[0]), p[1]) not in done]
        if rest:
            self._scan_places(rest)
        if self.blocked:
            return b""
        lines = self._other_lines(event)
        head = lines + b"\n" if lines else b""
        return b"".join(released) + head + b"data: " + orjson.dumps(obj) + b"\n\n"

    def rewrite_done(self, obj: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """For an event that repeats a closed slot's whole text: put in the text the client
        was sent and return (holder, key) of that field (default: no event does)."""
        return None

    def token_lists(self, obj: dict[str, Any]) -> None:
        """Logprob token lists of one event (default: the API sends none)."""

    def _release(self, slot: str) -> bytes:
        text = self._finish((0, slot))
        if self.repeats_text:
            self.closed[slot] = "".join(self.emitted.pop(slot, [])) + text
        return b"" if self.blocked else self.release_event(slot, text)

    def flush(self) -> bytes:
        """Slots still open when the stream stops early: their held-back text, released."""
        return b"".join(self._release(name) for _, name in sorted(self._redactors))

    def error_event(self, error: SidecarError, request_id: str) -> bytes:
        return self.error_payload(error, request_id)

    def settle_usage(self, prompt: int, completion: int) -> None:
        self.usage_prompt, self.usage_completion = _int(prompt), _int(completion)
        self.usage_total = self.usage_prompt + self.usage_completion


def _token_holders(value: Any) -> Iterator[dict[str, Any]]:
    """Every object under `value` whose `logprobs` is a list of token entries."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            entries = item.get("logprobs")
            if isinstance(entries, list) and any(isinstance(e, dict) and "token" in e
                                                 for e in entries):
                yield item
            stack.extend(v for k, v in item.items() if k != "logprobs" and isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def typed_event(name: str, obj: dict[str, Any]) -> bytes:
    """One SSE event with an `event:` line, as these APIs send them."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


# -- Anthropic Messages ----------------------------------------------------------------------

_DELTAS = {"text_delta": ("text", "text"), "input_json_delta": ("partial_json", "json"),
           "thinking_delta": ("thinking", "thinking")}
_DELTA_TYPE = {kind: delta for delta, (_, kind) in _DELTAS.items()}
_FIELD = {kind: key for key, kind in _DELTAS.values()}


class MessagesProcessor(TypedStreamProcessor):
    """Usage and output guards for a Messages reply, whole or streamed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._input = 0

    def _read_usage(self, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict) and "output_tokens" in usage:
            self.settle_usage(_prompt(usage), usage.get("output_tokens", 0))

    def read_event(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "message_start":
            message = obj.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._input = _prompt(usage)
        elif kind == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                if usage.get("input_tokens") is not None:
                    self._input = _prompt(usage)
                self.settle_usage(self._input, usage.get("output_tokens", 0))
        elif kind in ("message_stop", "error"):
            self.ended = True

    def streamed(self, obj: dict[str, Any]) -> Iterator[Streamed]:
        if obj.get("type") != "content_block_delta":
            return
        delta = obj.get("delta")
        index = obj.get("index")
        if not isinstance(delta, dict) or not isinstance(index, int):
            return
        found = _DELTAS.get(delta.get("type", ""))
        if found is not None and isinstance(delta.get(found[0]), str):
            yield delta, found[0], f"{index}:{found[1]}"

    def closing(self, obj: dict[str, Any]) -> list[str]:
        kind = obj.get("type")
        if kind == "content_block_stop":
            prefix = f"{obj.get('index')}:"
            return [name for _, name in sorted(self._redactors) if name.startswith(prefix)]
        if kind in ("message_delta", "message_stop", "error"):
            return [name for _, name in sorted(self._redactors)]
        return []

    def release_event(self, slot: str, text: str) -> bytes:
        if not text:
            return b""
        index, _, kind = slot.partition(":")
        return typed_event("content_block_delta", {
            "type": "content_block_delta", "index": int(index),
            "delta": {"type": _DELTA_TYPE[kind], _FIELD[kind]: text}})

    def error_payload(self, error: SidecarError, request_id: str) -> bytes:
        return typed_event("error", error_object(error_type(error.status), error.message,
                                                 error.code, request_id))

    def error_shape(self, error: dict[str, Any]) -> dict[str, Any]:
        inner = error.get("error", {})
        message = inner.get("message") or "The model provider refused the request."
        kind = inner.get("type") if isinstance(inner.get("type"), str) else "api_error"
        return error_object(kind, message, None, inner.get("request_id", ""))


def _prompt(usage: dict[str, Any]) -> int:
    """Input tokens including cache writes and reads (each is billed input)."""
    return sum(v for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
               if isinstance(v := usage.get(k), int) and not isinstance(v, bool) and v > 0)


# -- OpenAI Responses ------------------------------------------------------------------------

_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
_BINARY_DELTAS = frozenset({"response.audio.delta", "response.output_audio.delta"})
_DONE_TEXT = ("text", "arguments", "refusal", "input", "code", "transcript")


class ResponsesProcessor(TypedStreamProcessor):
    """Usage and output guards for a Responses reply, whole or streamed."""

    repeats_text = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._templates: dict[str, dict[str, Any]] = {}
        self._sequence: int | None = None  # the provider's last sequence_number, if it sends them

    def _read_usage(self, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict) and "output_tokens" in usage:
            self.settle_usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0))

    def read_event(self, obj: dict[str, Any]) -> None:
        sequence = obj.get("sequence_number")
        if isinstance(sequence, int):
            self._sequence = sequence
        kind = obj.get("type")
        if kind in _FINAL:
            self.ended = True
            response = obj.get("response")
            if isinstance(response, dict):
                self._read_usage(response)

    @staticmethod
    def _slot(obj: dict[str, Any], suffix: str) -> str | None:
        kind = obj.get("type")
        if not isinstance(kind, str) or not kind.endswith(suffix) or kind in _BINARY_DELTAS:
            return None
        where = obj.get("item_id", obj.get("output_index"))
        part = obj.get("content_index", obj.get("summary_index", ""))
        return f"{kind[:-len(suffix)]}|{where}|{part}"

    def streamed(self, obj: dict[str, Any]) -> Iterator[Streamed]:
        if not isinstance(obj.get("delta"), str):
            return
        slot = self._slot(obj, ".delta")
        if slot is not None:
            if slot not in self._templates:
                self._templates[slot] = {k: v for k, v in obj.items()
                                         if k not in ("delta", "sequence_number", "logprobs")}
            yield obj, "delta", slot

    def closing(self, obj: dict[str, Any]) -> list[str]:
        if obj.get("type") in _FINAL:
            return [name for _, name in sorted(self._redactors)]
        slot = self._slot(obj, ".done")
        return [slot] if slot is not None and (0, slot) in self._redactors else []

    def rewrite_done(self, obj: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
        """A `.done` event repeats its slot's whole text: it gets exactly what the client was sent."""
        slot = self._slot(obj, ".done")
        if slot is None or slot not in self.closed:
            return None
        text = self.closed.pop(slot)
        self._templates.pop(slot, None)
        for key in _DONE_TEXT:
            if isinstance(obj.get(key), str):
                obj[key] = text
                return obj, key
        return None

    def token_lists(self, obj: dict[str, Any]) -> None:
        """Logprob tokens spell the text they belong to: a delta's entries are held back with
        its slot's text (released when judged); every other event's lists are judged whole."""
        if self.scan is None:
            return
        slot = self._slot(obj, ".delta")
        if slot is not None and isinstance(obj.get("logprobs"), list):
            obj["logprobs"] = self._hold_tokens((0, "logprobs|" + slot), obj["logprobs"], False)
        else:
            self.scan_token_lists(obj)

    def scan_token_lists(self, obj: Any) -> bool:
        """Every `logprobs` token list under `obj`, redacted where a finding covers a token."""
        assert self.scan is not None
        changed = False
        for holder in _token_holders(obj):
            tokens = _Tokens(self.scan.stream())
            tokens.feed(holder["logprobs"])
            holder["logprobs"] = tokens.release(self.scan.actions, everything=True)
            count_findings(self.metrics, tokens.redactor.findings)
            self.blocked = self.blocked or tokens.redactor.blocked
            changed = changed or bool(tokens.redactor.findings)
        return changed

    def on_json(self, obj: Any) -> bool:
        changed = super().on_json(obj)
        if self.scan is not None and self.scan_token_lists(obj):
            changed = True
        if self.blocked:
            raise OutputBlocked()
        return changed

    def release_event(self, slot: str, text: str) -> bytes:
        key = (0, "logprobs|" + slot)
        held = self._hold_tokens(key, [], True) if key in self._tokens else []
        if not text and not held:
            return b""
        template = self._templates.get(slot, {"type": slot.partition("|")[0] + ".delta"})
        event = {**template, "delta": text}
        if held:
            event["logprobs"] = held
        if self._sequence is not None:
            event["sequence_number"] = self._sequence
        return typed_event(str(template["type"]), event)

    def error_payload(self, error: SidecarError, request_id: str) -> bytes:
        return typed_event("error", {"type": "error", "code": error.code, "message": error.message,
                                     "param": None,
                                     "sequence_number": (self._sequence or 0) + 1,
                                     "request_id": request_id})
