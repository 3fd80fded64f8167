"""OpenAI server-sent events: decode a byte stream into events and encode events. Pure: no I/O.

Typed requests live in `proxy/requests.py`."""

from __future__ import annotations


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
