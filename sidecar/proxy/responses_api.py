"""OpenAI's Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`): the typed request
and the stream's output guards. Pure: no I/O.

Request slots: `instructions` is the app's own (trusted like a developer message); `input` is a
string (the user's turn) or a list of items: messages of every role with `input_text`,
`output_text`, `refusal` and `input_file` parts (text files sent as data URLs decoded, read as
data), function and custom tool calls (the model's, in history), their outputs (data), reasoning
summaries, and any item this module does not know (every string in it; `*_output` items as
data). Tools, the text format's schema, prompt variables and any unknown field are read too.
`previous_response_id` and the other ids pass untouched.

Stream: every `response.*.delta` event with a string `delta` (output text, refusals, function
and custom tool call arguments, reasoning text and summaries, audio transcripts, ...) is a
piece of one slot per item and part; the matching `.done` event releases what the slot held
back and repeats the slot's text exactly as the client received it. Usage comes from
`response.usage` (`response.completed`, `.incomplete`, `.failed`), which also end the stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sidecar.errors import InvalidRequest, SidecarError
from sidecar.model import DATA
from sidecar.proxy.requests import (
    _ENUM_KEYS,
    ParsedRequest,
    _bad,
    _decode_text_file,
    _string_walk,
    _trust,
    _walk,
    register_parser,
)
from sidecar.proxy.typed_stream import Streamed, TypedStreamProcessor, typed_event

ROUTE = "responses"
ROLES = frozenset({"user", "assistant", "system", "developer"})
_NOT_READ = frozenset({
    "model", "stream", "stream_options", "temperature", "top_p", "max_output_tokens",
    "max_tool_calls", "parallel_tool_calls", "previous_response_id", "store", "background",
    "service_tier", "truncation", "user", "metadata", "include", "reasoning", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "top_logprobs", "conversation"})
_SKIP = _ENUM_KEYS | frozenset({"call_id", "encrypted_content", "image_url", "file_url", "status"})
_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
_BINARY_DELTAS = frozenset({"response.audio.delta", "response.output_audio.delta"})
_DONE_TEXT = ("text", "arguments", "refusal", "input", "code", "transcript")


def parse_responses(req: ParsedRequest, trusted: frozenset[str], _allow_token_ids: bool) -> None:
    body = req.body
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("instructions", "must be a string")
        if instructions:
            req.add(body, "instructions", "instructions", "developer",
                    _trust("developer", trusted), -1)
    items = body.get("input")
    if items is None and body.get("previous_response_id") is None and body.get("prompt") is None:
        raise InvalidRequest("Missing required field 'input'.")
    if isinstance(items, str):
        if items:
            req.add(body, "input", "input", "user", _trust("user", trusted), 0)
    elif isinstance(items, list):
        for i, item in enumerate(items):
            _item(req, item, f"input[{i}]", trusted, i)
    elif items is not None:
        raise _bad("input", "must be a string or a list of items")
    for key, value in body.items():
        if key in ("instructions", "input") or key in _NOT_READ or value is None:
            continue
        if key == "tools" and not isinstance(value, list):
            raise _bad(key, "must be a list")
        role = "tools" if key in ("tools", "tool_choice") else key
        _string_walk(req, body, key, key, role, _trust(role, trusted), -1)


def _item(req: ParsedRequest, item: Any, where: str, trusted: frozenset[str], group: int) -> None:
    if not isinstance(item, dict):
        raise _bad(where, "must be an object")
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type", "must be a string")
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", "must be one of: " + ", ".join(sorted(ROLES)))
        trust = _trust(role, trusted)
        content = item.get("content")
        if isinstance(content, str):
            if content:
                req.add(item, "content", f"{where}.content", role, trust, group)
        elif isinstance(content, list):
            for j, part in enumerate(content):
                _part(req, part, f"{where}.content[{j}]", role, trust, group)
        else:
            raise _bad(f"{where}.content", "must be a string or a list of content parts")
        _rest(req, item, where, role, trust, group, {"type", "role", "content"})
    elif kind.endswith("_output"):  # function, custom tool, computer, mcp ... results: data
        _rest(req, item, where, "tool", DATA, group, {"type"})
    else:  # the model's own calls and reasoning in history, and items this module does not know
        if kind == "function_call" and not isinstance(item.get("arguments", ""), str):
            raise _bad(f"{where}.arguments", "must be a string")
        _rest(req, item, where, "assistant", _trust("assistant", trusted), group, {"type"})


def _part(req: ParsedRequest, part: Any, where: str, role: str, trust: str, group: int) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _bad(where, "must be an object with a string 'type'")
    kind = part["type"]
    if kind in ("input_text", "output_text", "text", "summary_text"):
        if not isinstance(part.get("text"), str):
            raise _bad(f"{where}.text", "must be a string")
    elif kind == "refusal":
        if not isinstance(part.get("refusal"), str):
            raise _bad(f"{where}.refusal", "must be a string")
    elif kind == "input_file":
        data = part.get("file_data")
        if data is not None:
            if not isinstance(data, str):
                raise _bad(f"{where}.file_data", "must be a string")
            decoded = _decode_text_file(data, f"{where}.file_data")
            if decoded is not None:
                req.add(part, "file_data", f"{where}.file_data", role, DATA, group,
                        media=decoded[0], text=decoded[1])
        _rest(req, part, where, role, DATA, group, {"type", "file_data"})
        return
    elif kind == "input_image":
        _rest(req, part, where, role, trust, group, {"type", "image_url", "file_id", "detail"})
        return
    _rest(req, part, where, role, trust, group, {"type"})


def _rest(req: ParsedRequest, holder: dict[str, Any], where: str, role: str, trust: str,
          group: int, done: set[str]) -> None:
    for key, value in holder.items():
        if key in done or key in _SKIP or value is None:
            continue
        at = f"{where}.{key}"
        if isinstance(value, str):
            if value:
                req.add(holder, key, at, role, trust, group)
        elif isinstance(value, dict | list):
            _walk(req, value, at, role, trust, group, _SKIP)


register_parser(ROUTE, parse_responses)


# -- reply ---------------------------------------------------------------------------------------

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

    def release_event(self, slot: str, text: str) -> bytes:
        template = self._templates.get(slot, {"type": slot.partition("|")[0] + ".delta"})
        event = {**template, "delta": text}
        if self._sequence is not None:
            event["sequence_number"] = self._sequence
        return typed_event(str(template["type"]), event)

    def error_payload(self, error: SidecarError, request_id: str) -> bytes:
        return typed_event("error", {"type": "error", "code": error.code, "message": error.message,
                                     "param": None,
                                     "sequence_number": (self._sequence or 0) + 1,
                                     "request_id": request_id})
