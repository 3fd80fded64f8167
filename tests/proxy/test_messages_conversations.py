"""Conversations on /v1/messages: turns are stored as the client received them, a replay puts
the history before the request in Anthropic's shape, tool exchanges stay paired, and a
conversation begun over chat continues over Messages."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from tests.conftest import SidecarFactory
from tests.proxy.test_text_slots import received, script

MESSAGES = "/v1/messages"
HEADERS = {"anthropic-version": "2023-06-01"}


def msgs(content: Any, stream: bool = False, model: str = "mock-echo") -> dict[str, Any]:
    return {"model": model, "max_tokens": 64, "stream": stream, "system": "Be brief.",
            "messages": [{"role": "user", "content": content}]}


async def stored(session: aiohttp.ClientSession, sidecar: TestServer, cid: str) -> list[Any]:
    async with session.get(sidecar.make_url(f"/v1/conversations/{cid}")) as response:
        assert response.status == 200
        return list((await response.json())["messages"])


async def test_turns_are_stored_and_replayed_in_anthropics_shape(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """A whole and a streamed turn are stored redacted as sent; the replayed request reaches
    Anthropic with the history as user/assistant blocks before the new message."""
    sidecar = await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"))
    conv = {**HEADERS, "X-Conversation-Id": "claude-1"}
    async with session.post(sidecar.make_url(MESSAGES), json=msgs("mail me at a@example.com"),
                            headers=conv) as response:
        assert response.status == 200
    async with session.post(sidecar.make_url(MESSAGES), json=msgs("second question", stream=True),
                            headers=conv) as response:
        assert response.status == 200
        await response.read()
    assert [(m["role"], m["content"]) for m in await stored(session, sidecar, "claude-1")] == [
        ("user", "mail me at a@example.com"), ("assistant", "mail me at [REDACTED:pii:email]"),
        ("user", "second question"), ("assistant", "second question")]
    async with session.post(sidecar.make_url(MESSAGES), json=msgs("third"),
                            headers={**conv, "X-Conversation-Replay": "true"}) as response:
        assert response.status == 200
    sent = (await received(session, mock_upstream))[-1]["body"]
    assert sent["system"] == "Be brief."
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant"] * 2 + ["user"]
    assert sent["messages"][1]["content"] == [{"type": "text",
                                               "text": "mail me at [REDACTED:pii:email]"}]
    assert sent["messages"][-1]["content"] == "third"


async def test_a_tool_exchange_is_replayed_paired(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """The model's tool_use is stored as a tool call; the next request's tool_result is stored
    as its answer; a replay gives Anthropic the tool_use before its tool_result."""
    sidecar = await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"))
    conv = {**HEADERS, "X-Conversation-Id": "tools-1"}
    await script(session, mock_upstream, {"json": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_7", "name": "weather", "input": {"city": "Oslo"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 5}}})
    async with session.post(sidecar.make_url(MESSAGES), json=msgs("weather in Oslo?",
                                                                  model="mock-scripted"),
                            headers=conv) as response:
        assert response.status == 200
    answer = [{"type": "tool_result", "tool_use_id": "toolu_7", "content": "Sunny, 21 C"}]
    async with session.post(sidecar.make_url(MESSAGES), json=msgs(answer, model="mock-gpt"),
                            headers=conv) as response:
        assert response.status == 200
    async with session.post(sidecar.make_url(MESSAGES), json=msgs("thanks", model="mock-gpt"),
                            headers={**conv, "X-Conversation-Replay": "true"}) as response:
        assert response.status == 200
    sent = (await received(session, mock_upstream))[-1]["body"]["messages"]
    kinds = [(m["role"], [b["type"] for b in m["content"]] if isinstance(m["content"], list)
              else "text") for m in sent]
    assert kinds == [("user", ["text"]), ("assistant", ["text", "tool_use"]),
                     ("user", ["tool_result"]), ("assistant", ["text"]), ("user", "text")]
    assert sent[1]["content"][1] == {"type": "tool_use", "id": "toolu_7", "name": "weather",
                                     "input": {"city": "Oslo"}}
    assert sent[2]["content"][0]["tool_use_id"] == "toolu_7"


async def test_a_chat_conversation_continues_over_messages(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """One conversation, two APIs: the chat turn is replayed into the Messages request."""
    sidecar = await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"))
    conv = {**HEADERS, "X-Conversation-Id": "both-1"}
    async with session.post(sidecar.make_url("/v1/chat/completions"), json={
            "model": "mock-echo", "messages": [{"role": "user", "content": "I like tea"}]},
            headers=conv) as response:
        assert response.status == 200
    async with session.post(sidecar.make_url(MESSAGES), json=msgs("what do I like?"),
                            headers={**conv, "X-Conversation-Replay": "true"}) as response:
        assert response.status == 200
    sent = (await received(session, mock_upstream))[-1]["body"]["messages"]
    assert [m["content"] for m in sent] == [[{"type": "text", "text": "I like tea"}],
                                            [{"type": "text", "text": "I like tea"}],
                                            "what do I like?"]
