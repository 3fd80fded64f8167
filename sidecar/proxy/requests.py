"""Typed OpenAI requests: parse once, list every text the provider's model reads, serialize.

`parse_request(route, raw, ...)` checks the body's shape (every shape error is a 400 naming the
field, never a 500), refuses duplicate object keys, and returns a `ParsedRequest` whose
`texts()` are `TextSlot`s for every piece of text the model will read: message content of every
role and part type (text files sent as data URLs decoded), names, tool and function call
arguments, tool and function definitions with their parameter schemas, response-format schemas,
predicted output, `prompt`/`suffix`, embedding inputs, and any string under a field this module
does not know. Guards edit slots through `replace(index, text)`; what is forwarded is always
`serialize()` of the parsed body, never the raw bytes, so the provider reads what the guards
read. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from sidecar.errors import InvalidJSON, InvalidRequest
from sidecar.model import DATA, TRUSTED, UNTRUSTED, TextSlot

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
DEFAULT_TRUSTED_ROLES = frozenset({"system", "developer"})
_DATA_ROLES = frozenset({"tool", "function"})

# Top-level fields whose values the model does not read as text (sampling, routing, ids).
_NOT_READ = {
    "chat": frozenset({
        "model", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
        "top_logprobs", "user", "seed", "stop", "parallel_tool_calls", "metadata", "store",
        "service_tier", "modalities", "audio", "reasoning_effort", "verbosity", "safety_identifier",
        "prompt_cache_key",
    }),
    "completions": frozenset({
        "model", "stream", "stream_options", "n", "temperature", "top_p", "max_tokens",
        "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "user", "seed", "stop",
        "echo", "best_of",
    }),
    "embeddings": frozenset({"model", "encoding_format", "dimensions", "user"}),
}
# Keys inside read structures whose values are enums or ids, not text.
_ENUM_KEYS = frozenset({"type", "id", "tool_call_id", "detail", "format", "strict", "file_id"})
_TEXT_MEDIA = re.compile(r"text/[\w.+-]+|application/(?:json|xml|yaml|x-yaml|csv|x-ndjson)"
                         r"|[\w.+-]+/[\w.+-]+\+(?:json|xml)")
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)", re.S)
MAX_ITEMS = 2048  # prompt / input list items, as the provider allows


class TokenIdsRefused(InvalidRequest):
    """Token-id prompts cannot be read by any guard; refused unless a policy allows them."""

    code = "token_ids_not_allowed"


@dataclass(slots=True)
class ParsedRequest:
    """A request body that passed the shape checks, and the text slots the model reads.

    `slots[i]` sits at `body` position `places[i]` (the container and key that hold it, and
    how the text is encoded there), so an edit lands exactly where the text came from.
    """

    route: str
    body: dict[str, Any]
    stream: bool
    slots: list[TextSlot] = field(default_factory=list)
    places: list[tuple[Any, Any, str | None]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # message index of each slot (-1: none)
    changed: bool = False

    def texts(self) -> list[TextSlot]:
        return self.slots

    def replace(self, index: int, text: str) -> None:
        """Put `text` where slot `index` came from (re-encoding a decoded data URL)."""
        slot = self.slots[index]
        if text == slot.text:
            return
        holder, key, media = self.places[index]
        holder[key] = text if media is None else _data_url(media, text)
        self.slots[index] = TextSlot(slot.path, slot.role, slot.trust, text)
        self.changed = True

    def serialize(self) -> bytes:
        return orjson.dumps(self.body)

    def add(self, holder: Any, key: Any, path: str, role: str, trust: str, group: int,
            media: str | None = None, text: str | None = None) -> None:
        self.slots.append(TextSlot(path, role, trust, holder[key] if text is None else text))
        self.places.append((holder, key, media))
        self.groups.append(group)


def _data_url(media: str, text: str) -> str:
    return f"data:{media};base64," + base64.b64encode(text.encode("utf-8")).decode("ascii")


# -- JSON ----------------------------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string literal, unrolled


def _count_keys(value: Any) -> int:
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return count


def _duplicate_key(raw: bytes) -> str | None:
    """The first key that appears twice in one object (slow path, only when counts differ)."""
    import json

    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in items:
            if key in seen and not found:
                found.append(key)
            seen.add(key)
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)
    return found[0] if found else None


def has_duplicate_keys(raw: bytes, body: Any) -> str | None:
    """The duplicated key, if any object in `raw` has one: a first-key-wins parser would read
    a different body from the one the guards read. Keys are counted outside string literals
    (one regex pass in C) and compared with the parsed objects' keys."""
    if b":" not in raw:
        return None
    if b'\\"' in raw:  # an escaped quote: find the string literals properly
        colons = _STRING.sub(b'""', raw).count(b":")
    else:  # every other quote-delimited piece lies outside the strings
        colons = b"".join(raw.split(b'"')[::2]).count(b":")
    if colons == _count_keys(body):
        return None
    return _duplicate_key(raw)


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


def load_json(raw: bytes, max_depth: int) -> dict[str, Any]:
    """Decode a request body to an object, or raise a 400 that says what is wrong."""
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
    duplicate = has_duplicate_keys(raw, body)
    if duplicate is not None:
        raise InvalidJSON(f"The request body repeats the key {_field_name(duplicate)} in one object.")
    return body


def _field_name(key: str) -> str:
    """A key for an error message: quoted, short, and only when it looks like a field name."""
    return repr(key) if re.fullmatch(r"[\w.$-]{1,64}", key) else "(a key)"


# -- shape helpers -------------------------------------------------------------------------------

def _bad(path: str, what: str) -> InvalidRequest:
    return InvalidRequest(f"Field '{path}' {what}.")


def _walk(req: ParsedRequest, value: Any, path: str, role: str, trust: str, group: int,
          skip: frozenset[str] = _ENUM_KEYS) -> None:
    """Every string under `value` as a slot (keys in `skip` hold enums and ids, not text)."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(sub, str):
                    if key not in skip and sub:
                        req.add(item, key, f"{where}.{key}", role, trust, group)
                elif isinstance(sub, dict | list):
                    stack.append((sub, f"{where}.{key}"))
        elif isinstance(item, list):
            for n, sub in enumerate(item):
                if isinstance(sub, str):
                    if sub:
                        req.add(item, n, f"{where}[{n}]", role, trust, group)
                elif isinstance(sub, dict | list):
                    stack.append((sub, f"{where}[{n}]"))


def walk_fields(req: ParsedRequest, holder: dict[str, Any], where: str, role: str, trust: str,
                group: int, done: frozenset[str] | set[str] = frozenset(),
                skip: frozenset[str] = _ENUM_KEYS) -> None:
    """Every string under each field of `holder` not in `done` (fields in `skip`, at any depth,
    hold enums and ids, not text): the rest of a block an API module knows only in part."""
    for key, value in holder.items():
        if key in done or key in skip or value is None:
            continue
        at = f"{where}.{key}"
        if isinstance(value, str):
            if value:
                req.add(holder, key, at, role, trust, group)
        elif isinstance(value, dict | list):
            _walk(req, value, at, role, trust, group, skip)


def message_list(body: dict[str, Any]) -> list[Any]:
    """The body's `messages`: present, a list, not empty (else a 400 naming the field)."""
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("Missing required field 'messages'.")
    if not isinstance(messages, list):
        raise _bad("messages", "must be a list")
    if not messages:
        raise _bad("messages", "must not be empty")
    return messages


def message_role(message: Any, at: str, roles: frozenset[str]) -> str:
    """One message's role, checked against the roles its API knows (else a 400)."""
    if not isinstance(message, dict):
        raise _bad(at, "must be an object")
    role = message.get("role")
    if not isinstance(role, str) or role not in roles:
        raise _bad(f"{at}.role", "must be one of: " + ", ".join(sorted(roles)))
    return role


def _string_walk(req: ParsedRequest, holder: dict[str, Any], key: str, path: str, role: str,
                 trust: str, group: int) -> None:
    """A field that may hold text directly or nested (unknown fields, schemas)."""
    value = holder[key]
    if isinstance(value, str):
        if value:
            req.add(holder, key, path, role, trust, group)
    elif isinstance(value, dict | list):
        _walk(req, value, path, role, trust, group)


# -- chat ----------------------------------------------------------------------------------------

_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "function_call", "tool_call_id",
                           "refusal", "audio"})


def _trust(role: str, trusted: frozenset[str]) -> str:
    if role in trusted:
        return TRUSTED
    return DATA if role in _DATA_ROLES else UNTRUSTED


def _chat(req: ParsedRequest, trusted: frozenset[str]) -> None:
    for i, message in enumerate(message_list(req.body)):
        at = f"messages[{i}]"
        role = message_role(message, at, ROLES)
        trust = _trust(role, trusted)
        for key, value in message.items():
            if key == "role" or value is None:
                continue
            where = f"{at}.{key}"
            if key == "content":
                _content(req, message, where, role, trust, i)
            elif key == "tool_calls":
                _tool_calls(req, value, where, role, trust, i)
            elif key == "function_call":
                _function_call(req, value, where, role, trust, i)
            elif key in ("name", "refusal"):
                if not isinstance(value, str):
                    raise _bad(where, "must be a string")
                if value:
                    req.add(message, key, where, role, trust, i)
            elif key == "tool_call_id":
                if not isinstance(value, str):
                    raise _bad(where, "must be a string")
            elif key == "audio":
                if not isinstance(value, dict):
                    raise _bad(where, "must be an object")
            else:  # a field this module does not know: every string in it is read
                _string_walk(req, message, key, where, role, trust, i)
    _chat_extras(req, trusted)


def _content(req: ParsedRequest, message: dict[str, Any], path: str, role: str, trust: str,
             group: int) -> None:
    content = message["content"]
    if isinstance(content, str):
        if content:
            req.add(message, "content", path, role, trust, group)
        return
    if not isinstance(content, list):
        raise _bad(path, "must be a string or a list of content parts")
    for j, part in enumerate(content):
        where = f"{path}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(where, "must be an object with a string 'type'")
        kind = part["type"]
        if kind in ("text", "input_text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"{where}.text", "must be a string")
            if text:
                req.add(part, "text", f"{where}.text", role, trust, group)
            _rest(req, part, where, role, trust, group, {"type", "text"})
        elif kind == "refusal":
            text = part.get("refusal")
            if not isinstance(text, str):
                raise _bad(f"{where}.refusal", "must be a string")
            if text:
                req.add(part, "refusal", f"{where}.refusal", role, trust, group)
            _rest(req, part, where, role, trust, group, {"type", "refusal"})
        elif kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise _bad(f"{where}.image_url.url", "must be a string")
            _rest(req, part, where, role, trust, group, {"type", "image_url"})
        elif kind == "input_audio":
            audio = part.get("input_audio")
            if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
                raise _bad(f"{where}.input_audio.data", "must be a string")
            _rest(req, part, where, role, trust, group, {"type", "input_audio"})
        elif kind == "file":
            _file(req, part, where, role, group)
        else:
            _rest(req, part, where, role, trust, group, {"type"})


def _rest(req: ParsedRequest, part: dict[str, Any], where: str, role: str, trust: str,
          group: int, known: set[str]) -> None:
    for key in part:
        if key not in known and part[key] is not None:
            _string_walk(req, part, key, f"{where}.{key}", role, trust, group)


def _file(req: ParsedRequest, part: dict[str, Any], where: str, role: str, group: int) -> None:
    """A file part: its name is text, and a text file sent as a data URL is decoded and read
    (as data, whoever sent it); binary files (PDF, images) cannot be read here and pass."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise _bad(f"{where}.file", "must be an object")
    for key, value in file.items():
        at = f"{where}.file.{key}"
        if key == "filename":
            if not isinstance(value, str):
                raise _bad(at, "must be a string")
            if value:
                req.add(file, key, at, role, DATA, group)
        elif key == "file_data":
            if not isinstance(value, str):
                raise _bad(at, "must be a string")
            decoded = _decode_text_file(value, at)
            if decoded is not None:
                media, text = decoded
                req.add(file, key, at, role, DATA, group, media=media, text=text)
        elif key != "file_id" and value is not None:
            _string_walk(req, file, key, at, role, DATA, group)
    _rest(req, part, where, role, DATA, group, {"type", "file"})


def _decode_text_file(value: str, path: str) -> tuple[str, str] | None:
    """(media type, text) of a text file in a base64 data URL; None for binary media."""
    match = _DATA_URL.fullmatch(value)
    if match is None:
        return None
    media = match.group(1).lower()
    if not _TEXT_MEDIA.fullmatch(media):
        return None
    try:
        data = base64.b64decode(match.group(3), validate=True)
        text = data.decode("utf-8")
    except (binascii.Error, ValueError):
        raise _bad(path, f"holds a {media} file that is not valid base64 UTF-8 text") from None
    return media, text


def _tool_calls(req: ParsedRequest, calls: Any, path: str, role: str, trust: str,
                group: int) -> None:
    if not isinstance(calls, list):
        raise _bad(path, "must be a list")
    for k, call in enumerate(calls):
        where = f"{path}[{k}]"
        if not isinstance(call, dict):
            raise _bad(where, "must be an object")
        for key, value in call.items():
            if key == "function":
                _function_call(req, value, f"{where}.function", role, trust, group)
            elif key not in ("id", "type") and value is not None:
                _string_walk(req, call, key, f"{where}.{key}", role, trust, group)


def _function_call(req: ParsedRequest, call: Any, path: str, role: str, trust: str,
                   group: int) -> None:
    if not isinstance(call, dict):
        raise _bad(path, "must be an object")
    for key in ("name", "arguments"):
        value = call.get(key)
        if value is not None and not isinstance(value, str):
            raise _bad(f"{path}.{key}", "must be a string")
    for key, value in call.items():
        if value is not None:
            _string_walk(req, call, key, f"{path}.{key}", role, trust, group)


def _chat_extras(req: ParsedRequest, trusted: frozenset[str]) -> None:
    """Tools, functions, response format, tool choice, prediction and unknown fields: text the
    model reads that the app (not a message role) supplied; trusted only if the policy trusts
    the `tools` role."""
    body = req.body
    not_read = _NOT_READ["chat"]
    for key, value in body.items():
        if key == "messages" or value is None or key in not_read:
            continue
        if key in ("tools", "functions") and not isinstance(value, list):
            raise _bad(key, "must be a list")
        role = "tools" if key in ("tools", "functions", "tool_choice", "function_call") else key
        _string_walk(req, body, key, key, role, _trust(role, trusted), -1)


# -- completions and embeddings ------------------------------------------------------------------

def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        (isinstance(v, int) and not isinstance(v, bool)) or
        (isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v))
        for v in value)


def _prompt_like(req: ParsedRequest, field_name: str, role: str, trust: str,
                 allow_token_ids: bool) -> None:
    body = req.body
    value = body.get(field_name)
    if value is None:
        raise InvalidRequest(f"Missing required field '{field_name}'.")
    if isinstance(value, str):
        if value:
            req.add(body, field_name, field_name, role, trust, -1)
        return
    if not isinstance(value, list):
        raise _bad(field_name, "must be a string or a list of strings")
    if len(value) > MAX_ITEMS:
        raise _bad(field_name, f"has more than {MAX_ITEMS} items")
    if _is_token_ids(value):
        if not allow_token_ids:
            raise TokenIdsRefused(
                f"Field '{field_name}' holds token ids, which the sidecar's guards cannot read; "
                "send text (a policy may allow token ids).")
        return
    for n, item in enumerate(value):
        if not isinstance(item, str):
            raise _bad(f"{field_name}[{n}]", "must be a string")
        if item:
            req.add(value, n, f"{field_name}[{n}]", role, trust, -1)


def _completions(req: ParsedRequest, trusted: frozenset[str], allow_token_ids: bool) -> None:
    _prompt_like(req, "prompt", "prompt", _trust("prompt", trusted), allow_token_ids)
    _unknown_fields(req, {"prompt"}, trusted)


def _embeddings(req: ParsedRequest, trusted: frozenset[str], allow_token_ids: bool) -> None:
    _prompt_like(req, "input", "input", DATA if "input" not in trusted else TRUSTED, allow_token_ids)
    _unknown_fields(req, {"input"}, trusted)


def _unknown_fields(req: ParsedRequest, done: set[str], trusted: frozenset[str]) -> None:
    body = req.body
    not_read = _NOT_READ[req.route]
    for key, value in body.items():
        if key in done or key in not_read or value is None:
            continue
        if key == "suffix" and not isinstance(value, str):
            raise _bad(key, "must be a string")
        _string_walk(req, body, key, key, key, _trust(key, trusted), -1)


# -- entry point ---------------------------------------------------------------------------------

Parser = Callable[[ParsedRequest, frozenset[str], bool], None]
_PARSERS: dict[str, Parser] = {
    "chat": lambda req, trusted, _allow: _chat(req, trusted),
    "completions": _completions,
    "embeddings": _embeddings,
}


def register_parser(route: str, parser: Parser) -> None:
    """Another API's typed request (proxy/anthropic.py, proxy/responses_api.py) joins the same
    entry point, so every route's text reaches the same guards the same way."""
    _PARSERS[route] = parser


def parse_request(route: str, raw: bytes, max_depth: int, *,
                  trusted_roles: Iterable[str] = DEFAULT_TRUSTED_ROLES,
                  allow_token_ids: bool = False) -> ParsedRequest:
    """Decode and shape-check a request body; every text the model reads becomes a slot."""
    body = load_json(raw, max_depth)
    return parse_object(route, body, trusted_roles=trusted_roles, allow_token_ids=allow_token_ids)


def parse_object(route: str, body: dict[str, Any], *,
                 trusted_roles: Iterable[str] = DEFAULT_TRUSTED_ROLES,
                 allow_token_ids: bool = False) -> ParsedRequest:
    """The slots of an already decoded body (conversation replay builds one this way)."""
    model = body.get("model")
    if model is None:
        raise InvalidRequest("Missing required field 'model'.")
    if not isinstance(model, str):
        raise _bad("model", "must be a string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream", "must be a boolean")
    req = ParsedRequest(route=route, body=body, stream=bool(stream))
    trusted = trusted_roles if isinstance(trusted_roles, frozenset) else frozenset(trusted_roles)
    _PARSERS[route](req, trusted, allow_token_ids)
    return req


# The other APIs' typed requests build on the helpers above and register their parsers here, so
# `parse_request` knows every route however this module was first imported.
from sidecar.proxy import anthropic as _anthropic  # noqa: E402, F401
from sidecar.proxy import responses_api as _responses_api  # noqa: E402, F401
