"""OpenAI's Responses API (`POST /v1/responses`): the typed request. Pure: no I/O. The reply's
output guards (also for `GET /v1/responses/{id}`) are `typed_stream.ResponsesProcessor`.

Request slots: `instructions` is the app's own (trusted like a developer message); `input` is a
string (the user's turn) or a list of items: messages of every role with `input_text`,
`output_text`, `refusal` and `input_file` parts (text files sent as data URLs decoded, read as
data), function and custom tool calls (the model's, in history), their outputs (data), reasoning
summaries, and any item this module does not know (every string in it; `*_output` items as
data). Tools, the text format's schema, prompt variables and any unknown field are read too.
`previous_response_id` and the other ids pass untouched.
"""

from __future__ import annotations

from typing import Any

from sidecar.errors import InvalidRequest
from sidecar.model import DATA
from sidecar.proxy.requests import (
    _ENUM_KEYS,
    ParsedRequest,
    _bad,
    _decode_text_file,
    _string_walk,
    _trust,
    register_parser,
    walk_fields,
)

ROUTE = "responses"
ROLES = frozenset({"user", "assistant", "system", "developer"})
_NOT_READ = frozenset({
    "model", "stream", "stream_options", "temperature", "top_p", "max_output_tokens",
    "max_tool_calls", "parallel_tool_calls", "previous_response_id", "store", "background",
    "service_tier", "truncation", "user", "metadata", "include", "reasoning", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "top_logprobs", "conversation"})
_SKIP = _ENUM_KEYS | frozenset({"call_id", "encrypted_content", "image_url", "file_url", "status"})


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
        if not isinstance(role, str) or role not in ROLES:
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
    walk_fields(req, holder, where, role, trust, group, done, _SKIP)


register_parser(ROUTE, parse_responses)
