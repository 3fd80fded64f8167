"""Output guards for streams whose events name their own type (Anthropic Messages, OpenAI
Responses): the shared machinery.

Each API maps its stream shape to named slots (`streamed()`: which field of which event is a
piece of which slot) and says where a slot ends (`closing()`). Every slot gets its own
`StreamRedactor`, so a secret split across any number of deltas is still caught while text
flows with a bounded hold-back; when a slot ends, the text it still holds is sent as one more
delta event of the API's own shape (`release_event()`), just before the event that ends it.
Every other string of an event is scanned whole, `event:` and `id:` lines are kept, comments
scanned. Usage is read from the API's own fields (`read_usage()`), and `ended` turns true on
the API's last event, since these streams carry no `[DONE]`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from sidecar.errors import SidecarError
from sidecar.proxy.openai import event_data
from sidecar.proxy.response import ResponseProcessor, string_places

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

    def _release(self, slot: str) -> bytes:
        text = self._finish((0, slot))
        if self.repeats_text:
            self.closed[slot] = "".join(self.emitted.pop(slot, [])) + text
        if not text or self.blocked:
            return b""
        return self.release_event(slot, text)

    def flush(self) -> bytes:
        """Slots still open when the stream stops early: their held-back text, released."""
        return b"".join(self._release(name) for _, name in sorted(self._redactors))

    def error_event(self, error: SidecarError, request_id: str) -> bytes:
        return self.error_payload(error, request_id)

    def settle_usage(self, prompt: int, completion: int) -> None:
        self.usage_prompt, self.usage_completion = _int(prompt), _int(completion)
        self.usage_total = self.usage_prompt + self.usage_completion


def typed_event(name: str, obj: dict[str, Any]) -> bytes:
    """One SSE event with an `event:` line, as these APIs send them."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
