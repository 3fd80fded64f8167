"""The typed-stream output guards (Anthropic Messages, OpenAI Responses) as pure functions:
however a provider splits a secret across deltas, no piece of it reaches the client, the text
the client assembles equals the whole-reply redaction, and the usage is the API's own."""

from __future__ import annotations

import itertools
import secrets
import string
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.metrics import Metrics
from sidecar.policies import Policies
from sidecar.proxy.response import ResponseProcessor
from sidecar.proxy.typed_stream import MessagesProcessor, ResponsesProcessor
from sidecar.settings import Settings

OUTPUT = Policies(Settings()).default.output
assert OUTPUT is not None
SECRET = "sk-proj-" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(48))
TEXT = f"Here it is: {SECRET} and an e-mail, alice.smith@example.com, done."


def event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **fields})


def cut(text: str, points: list[int]) -> list[str]:
    edges = [0, *sorted(set(points)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges) if b > a]


def run(processor: ResponseProcessor, events: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    sent = b"".join(processor.on_event(e) for e in events)
    out = []
    for block in sent.split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if b"data" in lines:
            data = orjson.loads(lines[b"data"])
            assert lines[b"event"].decode() == data["type"]  # every event keeps its name
            out.append((data["type"], data))
    return out


def whole_redaction(text: str) -> str:
    return OUTPUT.prepare("messages", []).whole(text).text  # type: ignore[union-attr]


points = st.lists(st.integers(min_value=1, max_value=len(TEXT) - 1), max_size=30)


@settings(max_examples=60, deadline=None)
@given(points)
def test_messages_text_split_anywhere(at: list[int]) -> None:
    """Anthropic text deltas split at any points: no secret byte leaks, the deltas join into
    the whole redaction, and usage is input (with cache) plus output tokens."""
    processor = MessagesProcessor("messages", OUTPUT.prepare("messages", []), Metrics())
    events = [event("message_start", message={"id": "m", "usage": {
                  "input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 1}}),
              event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
              *(event("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
                for p in cut(TEXT, at)),
              event("content_block_stop", index=0),
              event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 9}),
              event("message_stop")]
    got = run(processor, events)
    text = "".join(d["delta"]["text"] for k, d in got if k == "content_block_delta")
    assert text == whole_redaction(TEXT)
    assert SECRET[8:20] not in str(got)
    assert [k for k, _ in got][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert processor.ended and processor.usage_total == 17 and processor.usage_completion == 9


@settings(max_examples=60, deadline=None)
@given(points)
def test_responses_text_split_anywhere(at: list[int]) -> None:
    """Responses output-text deltas split at any points: no secret byte leaks, the deltas join
    into the text the done event repeats, which is the whole redaction."""
    processor = ResponsesProcessor("responses", OUTPUT.prepare("responses", []), Metrics())
    ids = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events = [*(event("response.output_text.delta", delta=p, sequence_number=n, **ids)
                for n, p in enumerate(cut(TEXT, at))),
              event("response.output_text.done", text=TEXT, **ids),
              event("response.completed", response={"output": [], "usage": {
                  "input_tokens": 4, "output_tokens": 6, "total_tokens": 10}})]
    got = run(processor, events)
    text = "".join(d["delta"] for k, d in got if k == "response.output_text.delta")
    done = next(d for k, d in got if k == "response.output_text.done")
    assert text == done["text"] == whole_redaction(TEXT)
    assert SECRET[8:20] not in str(got)
    assert processor.ended and processor.usage_total == 10


def test_two_blocks_are_redacted_apart() -> None:
    """Interleaved blocks (text and tool input) each keep their own hold-back: one block's
    pieces never end up in the other's deltas."""
    processor = MessagesProcessor("messages", OUTPUT.prepare("messages", []), Metrics())
    json_pieces = ['{"key": "', SECRET[:20], SECRET[20:], '"}']
    events = [event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
              event("content_block_start", index=1, content_block={"type": "tool_use", "id": "t",
                                                                   "name": "f", "input": {}})]
    for n, piece in enumerate(json_pieces):
        events.append(event("content_block_delta", index=1,
                            delta={"type": "input_json_delta", "partial_json": piece}))
        events.append(event("content_block_delta", index=0,
                            delta={"type": "text_delta", "text": f"word{n} "}))
    events += [event("content_block_stop", index=0), event("content_block_stop", index=1),
               event("message_stop")]
    got = run(processor, events)
    text = "".join(d["delta"].get("text", "") for k, d in got if k == "content_block_delta"
                   and d["index"] == 0)
    arguments = "".join(d["delta"].get("partial_json", "") for k, d in got
                        if k == "content_block_delta" and d["index"] == 1)
    assert text == "word0 word1 word2 word3 "
    assert SECRET not in arguments and orjson.loads(arguments)["key"].startswith("[REDACTED:")
