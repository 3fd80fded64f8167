"""Conversations on `/v1/messages`: the same stored conversations as chat, in Anthropic's shape.

A conversation is stored in one shape (OpenAI chat messages), whichever API wrote it, so a
conversation begun over chat can continue over Messages and the other way round. This module
translates at the edges: the request's new turn (user text, tool results) into stored
messages; the stored history into Anthropic messages for a replay (text, `tool_use` and
`tool_result` blocks; put first, since Anthropic keeps the system prompt out of `messages`);
and the reply as the client received it (text deltas, tool input JSON) into the assistant
message to store. Images and documents are not stored (as in chat, only text and tool calls are).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sidecar.conversations import select_for_replay
from sidecar.errors import StoreUnavailable
from sidecar.guards.injection import content_text
from sidecar.model import Principal
from sidecar.proxy.conversations_api import (
    CONVERSATIONS,
    STORE_OP,
    ConversationRequest,
    ReplyCollector,
    Turn,
    _Call,
    message_tokens,
    new_messages,
)
from sidecar.proxy.openai import event_data
from sidecar.proxy.requests import ParsedRequest
from sidecar.store.redis import StoreError


def _text(content: Any) -> str:
    """The text of an Anthropic content: a string, or its text blocks joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text"
                       and isinstance(b.get("text"), str))
    return ""


def to_stored(messages: list[Any]) -> list[dict[str, Any]]:
    """Anthropic messages as stored (chat) messages: tool results become `tool` messages."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        if message.get("role") == "assistant":
            calls = [{"id": b.get("id", ""), "type": "function", "function": {
                "name": b.get("name", ""), "arguments": orjson.dumps(b.get("input", {})).decode()}}
                for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"]
            stored: dict[str, Any] = {"role": "assistant", "content": _text(content) or None}
            if calls:
                stored["tool_calls"] = calls
            out.append(stored)
            continue
        for block in blocks:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")),
                            "content": _text(block.get("content"))})
        text = _text(content)
        if text:
            out.append({"role": "user", "content": text})
    return out


def from_stored(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored (chat) messages as Anthropic messages; a replay starts with a user turn."""
    out: list[dict[str, Any]] = []
    for m in history:
        role = m.get("role")
        if role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = content_text(m.get("content"))
            if text:
                blocks.append({"type": "text", "text": text})
            for call in m.get("tool_calls") or ():
                function = call.get("function") or {}
                try:
                    arguments = orjson.loads(function.get("arguments") or "{}")
                except orjson.JSONDecodeError:
                    arguments = {"arguments": function.get("arguments")}
                blocks.append({"type": "tool_use", "id": call.get("id", ""),
                               "name": function.get("name", ""),
                               "input": arguments if isinstance(arguments, dict) else {}})
            if blocks and out:  # a reply to nothing cannot open a replay
                out.append({"role": "assistant", "content": blocks})
        elif role == "tool":
            block = {"type": "tool_result", "tool_use_id": m.get("tool_call_id", ""),
                     "content": content_text(m.get("content"))}
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(block)
            elif out:
                out.append({"role": "user", "content": [block]})
        elif role in ("user", "function"):
            text = content_text(m.get("content"))
            if text:
                out.append({"role": "user", "content": [{"type": "text", "text": text}]})
    return out


async def begin_messages_turn(app: web.Application, principal: Principal,
                              conv: ConversationRequest, parsed: ParsedRequest) -> Turn:
    """`begin_turn` for /v1/messages: remember the new turn; with replay, put the stored
    history before the request's messages (`turn.replayed > 0`: the body changed)."""
    messages: list[Any] = parsed.body["messages"]
    turn = Turn(conv.conversation_id, principal.tenant, principal.key_id,
                new_messages(to_stored(messages)))
    if not conv.replay:
        return turn
    conversations = app[CONVERSATIONS]
    try:
        history = await conversations.service.history(principal.tenant, conv.conversation_id)
    except StoreError:
        conversations.metrics.store_errors.labels(STORE_OP).inc()
        raise StoreUnavailable() from None
    answered = [m["tool_call_id"] for m in turn.new_messages if m.get("role") == "tool"]
    replay = from_stored(select_for_replay(history, conversations.settings.replay_max_tokens,
                                           message_tokens, answered))
    if replay:
        parsed.body["messages"] = [*replay, *messages]
        turn.replayed = len(replay)
    return turn


class MessagesReplyCollector(ReplyCollector):
    """The Messages reply as the client received it: text blocks and tool calls."""

    def feed(self, sent: bytes) -> None:
        for event in self._decoder.feed(sent):
            data = event_data(event)
            try:
                obj = orjson.loads(data) if data is not None else None
            except orjson.JSONDecodeError:
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("index"), int):
                continue
            index = obj["index"]
            if obj.get("type") == "content_block_start":
                self._start(index, obj.get("content_block"))
            elif obj.get("type") == "content_block_delta" and isinstance(obj.get("delta"), dict):
                delta = obj["delta"]
                if isinstance(delta.get("text"), str):
                    self._text.append(delta["text"])
                elif isinstance(delta.get("partial_json"), str) and index in self._calls:
                    self._calls[index].arguments.append(delta["partial_json"])

    def _start(self, index: int, block: Any) -> None:
        if isinstance(block, dict) and block.get("type") == "tool_use":
            self._calls[index] = _Call(id=str(block.get("id", "")), name=str(block.get("name", "")))
        elif isinstance(block, dict) and isinstance(block.get("text"), str) and block["text"]:
            self._text.append(block["text"])

    def from_json(self, body: Any) -> None:
        content = body.get("content") if isinstance(body, dict) else None
        for index, block in enumerate(content if isinstance(content, list) else ()):
            self._start(index, block)
            if isinstance(block, dict) and block.get("type") == "tool_use":
                self._calls[index].arguments.append(orjson.dumps(block.get("input", {})).decode())
