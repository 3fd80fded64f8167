"""Parse and validate OpenAI request bodies; decode and encode SSE events. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.errors import InvalidJSON, InvalidRequest

# Route name -> the body fields it must carry, with their JSON types.
_REQUIRED: dict[str, tuple[tuple[str, type | tuple[type, ...]], ...]] = {
    "chat": (("model", str), ("messages", list)),
    "completions": (("model", str), ("prompt", (str, list))),
    "embeddings": (("model", str), ("input", (str, list))),
}


@dataclass(slots=True)
class ParsedRequest:
    """A request body that passed the shape checks, and whether it asks for a stream."""

    route: str
    body: dict[str, Any]
    stream: bool


def json_depth(value: Any) -> int:
    """Nesting depth of containers in a parsed JSON value (iterative: no recursion to exhaust)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return deepest


def parse_body(route: str, raw: bytes, max_depth: int) -> ParsedRequest:
    """Decode and shape-check a request body, or raise a 400 that says what is wrong."""
    if not raw.strip():
        raise InvalidJSON("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "UTF-8" in str(exc):
            raise InvalidJSON("The request body is not valid UTF-8.") from None
        if "depth limit" in str(exc):
            raise InvalidJSON(f"The request body is nested deeper than {max_depth} levels.") from None
        raise InvalidJSON() from None
    if not isinstance(body, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    # Every container opens with a bracket in the raw bytes, so a body with no more brackets
    # than the cap cannot be nested deeper (two C-speed counts instead of a walk).
    if raw.count(b"{") + raw.count(b"[") > max_depth and json_depth(body) > max_depth:
        raise InvalidJSON(f"The request body is nested deeper than {max_depth} levels.")
    for field, kind in _REQUIRED.get(route, ()):
        value = body.get(field)
        if value is None:
            raise InvalidRequest(f"Missing required field '{field}'.")
        if not isinstance(value, kind):
            raise InvalidRequest(f"Field '{field}' has the wrong type.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise InvalidRequest("Field 'stream' must be a boolean.")
    return ParsedRequest(route=route, body=body, stream=bool(stream))


class SSEDecoder:
    """Splits an SSE byte stream into whole events, however the bytes were chunked."""

    __slots__ = ("_buffer", "max_event_bytes")

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._buffer = b""
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the events completed by `chunk` (each without its blank-line terminator)."""
        buffer = self._buffer + chunk
        held = b""
        if b"\r" in buffer:
            if buffer.endswith(b"\r"):  # its LF may come with the next chunk: decide then
                buffer, held = buffer[:-1], b"\r"
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, rest = buffer.split(b"\n\n")
        self._buffer = rest + held
        if len(self._buffer) > self.max_event_bytes:
            raise ValueError("SSE event larger than the allowed maximum")
        return [e for e in events if e]

    def flush(self) -> list[bytes]:
        """The unterminated rest at end of stream, if it holds anything."""
        rest, self._buffer = self._buffer.replace(b"\r", b"\n").strip(b"\n"), b""
        return [rest] if rest else []


def event_data(event: bytes) -> bytes | None:
    """The `data` field of one SSE event (multi-line data joined by newlines), or None."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [
        line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
    ]
    return b"\n".join(lines) if lines else None


def encode_event(data: bytes) -> bytes:
    """One SSE event carrying `data` (which must not contain a newline; JSON from orjson never does)."""
    return b"data: " + data + b"\n\n"


DONE_EVENT = encode_event(b"[DONE]")
