"""Coverage-guided fuzz targets (atheris/libFuzzer) for the parsers we wrote ourselves.

Run as `python tests/fuzz/atheris_targets.py <target> -runs=N -seed=S`; test_atheris.py runs
each target bounded and deterministic. hypothesis explores shapes we describe; libFuzzer
mutates bytes guided by branch coverage of our own modules, so it reaches inputs nobody
thought to describe. Each target states the contract it checks; a broken contract raises and
atheris exits non-zero with the input.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

from sidecar.auth.keyformat import parse_key
from sidecar.errors import SidecarError
from sidecar.guards.injection import default_detector
from sidecar.guards.normalize import build_views
from sidecar.guards.redact import OutputScanner, apply_actions
from sidecar.guards.sanitize import has_hidden_characters, sanitize_text
from sidecar.guards.stream import StreamRedactor
from sidecar.proxy.openai import SSEDecoder
from sidecar.proxy.requests import parse_request

DETECTOR = default_detector()
SCANNER = OutputScanner()
ACTIONS = {"secret": "redact", "pii": "redact"}


def key_strings(data: bytes) -> None:
    """Any header value: a parsed key or None, never an exception; parsing is stable."""
    text = data.decode("utf-8", "surrogateescape")
    parsed = parse_key(text)
    if parsed is not None:
        assert parse_key(text) == parsed


def sse_splits(data: bytes) -> None:
    """However an SSE byte stream is cut into chunks, the same events come out."""
    fdp = atheris.FuzzedDataProvider(data)
    cuts = sorted(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), 0, 4096))
    stream = fdp.ConsumeBytes(4096)
    whole = SSEDecoder()
    expected = whole.feed(stream) + whole.flush()
    pieces = SSEDecoder()
    got: list[bytes] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        cut = min(cut, len(stream))
        got += pieces.feed(stream[start:cut])
        start = max(start, cut)
    got += pieces.flush()
    assert got == expected, (got, expected)


def request_bodies(data: bytes) -> None:
    """Any body: a parsed request (every text slot's text found in its body) or one of our 4xx
    errors, never anything else."""
    fdp = atheris.FuzzedDataProvider(data)
    route = fdp.PickValueInList(["chat", "completions", "embeddings"])
    try:
        parse_request(route, fdp.ConsumeBytes(fdp.remaining_bytes()), 64)
    except SidecarError as exc:
        assert 400 <= exc.status < 500, exc.status


def input_guards(data: bytes) -> None:
    """Any text: sanitizing leaves no hidden character, detection views build, the injection
    score is a probability."""
    text = data.decode("utf-8", "replace")
    clean = sanitize_text(text)
    assert not has_hidden_characters(clean)
    build_views(text)
    result = DETECTOR.score_text(text)
    assert 0.0 <= result.score <= 1.0


def output_guards(data: bytes) -> None:
    """Any reply: the whole-text scan and a stream cut in two agree on what the client sees."""
    fdp = atheris.FuzzedDataProvider(data)
    cut = fdp.ConsumeIntInRange(0, 512)
    text = fdp.ConsumeUnicodeNoSurrogates(1024)
    whole = apply_actions(text, SCANNER.scan(text), ACTIONS).text
    stream = StreamRedactor(SCANNER, ACTIONS)
    streamed = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish()
    assert streamed == whole, (text, streamed, whole)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "key_strings": key_strings,
    "sse_splits": sse_splits,
    "request_bodies": request_bodies,
    "input_guards": input_guards,
    "output_guards": output_guards,
}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    # Branch coverage of every loaded function (ours and the standard library's `re`, `json`
    # ... they call); instrumenting on import misses modules an editable install loads.
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
