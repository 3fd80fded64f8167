"""The SSE decoder on hostile provider streams: only the oversize ValueError, and chunking
never changes the events the relay and the output scanner see."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sidecar.proxy.openai import SSEDecoder, event_data
from tests.fuzz.harness import fuzz

FIELDS = [b"data: ", b"data:", b"event: ", b"id: ", b": ", b"retry: ", b"", b"dat"]
line = st.builds(lambda f, v: f + v, st.sampled_from(FIELDS),
                 st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")))
newline = st.sampled_from([b"\n", b"\r\n", b"\r"])
event = st.lists(st.tuples(line, newline), min_size=1, max_size=4).map(
    lambda lines: b"".join(text + end for text, end in lines))
streams = st.one_of(
    st.lists(st.tuples(event, newline), max_size=8).map(lambda evs: b"".join(e + n for e, n in evs)),
    st.binary(max_size=600),
)


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """`stream` split at `points` (anywhere, between a CR and its LF too)."""
    keep = sorted({p for p in points if 0 < p < len(stream)})
    bounds = [0, *keep, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def decode(chunks: list[bytes], max_event_bytes: int = 1024 * 1024) -> list[bytes]:
    decoder = SSEDecoder(max_event_bytes)
    events: list[bytes] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events + decoder.flush()


@fuzz(200)
@given(streams, st.lists(st.integers(min_value=0, max_value=700), max_size=20))
def test_chunking_never_changes_the_events(stream: bytes, points: list[int]) -> None:
    """However the provider's bytes are split into chunks, the decoded events are the same."""
    assert decode(cut(stream, points)) == decode([stream])


@fuzz(200)
@given(streams, st.lists(st.integers(min_value=0, max_value=700), max_size=20),
       st.integers(min_value=1, max_value=200))
def test_only_oversize_raises(stream: bytes, points: list[int], limit: int) -> None:
    """The decoder raises nothing but ValueError, and that only when an event outgrows the cap."""
    normalised = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    longest = max(len(piece) for piece in normalised.split(b"\n\n"))
    try:
        events = decode(cut(stream, points), limit)
    except ValueError:
        assert longest > limit
        return
    assert all(isinstance(e, bytes) and e for e in events)


@fuzz(200)
@given(st.binary(max_size=400))
def test_event_data_never_raises(event: bytes) -> None:
    """event_data returns bytes or None for any event; a plain `data: X` event gives X."""
    data = event_data(event)
    assert data is None or isinstance(data, bytes)
    if event.startswith(b"data: ") and b"\n" not in event:
        assert data == event[6:]
    if b"data:" not in event:
        assert data is None


@fuzz(200)
@given(st.lists(st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b),
                min_size=1, max_size=5),
       st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_multi_line_data_is_joined(parts: list[bytes], points: list[int]) -> None:
    """A multi-line data event decodes to its lines joined by newlines, however it is chunked."""
    stream = b"".join(b"data: " + p + b"\n" for p in parts) + b"\n"
    assert [event_data(e) for e in decode(cut(stream, points))] == [b"\n".join(parts)]


def test_crlf_split_across_chunks_keeps_the_event_whole() -> None:
    """A CRLF line ending split between two TCP chunks does not split a multi-line event."""
    stream = b'data: {"a":\r\ndata: 1}\r\n\r\n'
    at = stream.index(b"\r") + 1
    assert [event_data(e) for e in decode([stream[:at], stream[at:]])] == [b'{"a":\n1}']
