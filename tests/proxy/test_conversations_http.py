"""Conversations end to end through the request path: turns stored, listed and replayed."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from sidecar.metrics import Metrics
from tests.conftest import SidecarFactory, create_key

CHAT = "/v1/chat/completions"


def chat(content: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "mock-echo", "stream": stream,
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": content}]}


async def test_turns_are_stored_and_replayed(make_sidecar: SidecarFactory, mock_upstream: TestServer,
                                             session: aiohttp.ClientSession) -> None:
    """A plain and a streamed turn are stored as the client got them (redacted), and a replayed
    request reaches the provider with that history before the new message."""
    sidecar = await make_sidecar()
    conv = {"X-Conversation-Id": "support-42"}
    async with session.post(sidecar.make_url(CHAT), json=chat("first, mail me at a@example.com"),
                            headers=conv) as response:
        assert response.status == 200
    async with session.post(sidecar.make_url(CHAT), json=chat("second question", stream=True),
                            headers=conv) as response:
        assert response.status == 200
        await response.read()
    async with session.get(sidecar.make_url("/v1/conversations/support-42")) as response:
        stored = await response.json()
    contents = [m["content"] for m in stored["messages"]]
    assert contents == ["first, mail me at a@example.com", "first, mail me at [REDACTED:pii:email]",
                        "second question", "second question"]
    async with session.post(sidecar.make_url(CHAT), json=chat("third"),
                            headers={**conv, "X-Conversation-Replay": "true"}) as response:
        assert response.status == 200
    async with session.get(mock_upstream.make_url("/_mock/requests")) as response:
        sent = (await response.json())["requests"][-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert sent[-1]["content"] == "third" and sent[2]["content"].endswith("[REDACTED:pii:email]")
    async with session.get(sidecar.make_url("/v1/conversations")) as response:
        listing = await response.json()
    assert [c["id"] for c in listing["data"]] == ["support-42"]


async def test_bad_conversation_id_is_400(make_sidecar: SidecarFactory,
                                          session: aiohttp.ClientSession) -> None:
    """An id outside 1-128 characters of [A-Za-z0-9._-] is refused before anything is sent."""
    sidecar = await make_sidecar()
    async with session.post(sidecar.make_url(CHAT), json=chat("hi"),
                            headers={"X-Conversation-Id": "bad id/../x"}) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_request"


async def test_replay_needs_the_conversations_scope(make_sidecar: SidecarFactory,
                                                    mock_upstream: TestServer, redis_url: str,
                                                    session: aiohttp.ClientSession) -> None:
    """A chat-only key of the same tenant cannot replay another key's conversation: replaying
    is reading, so it gets 403 insufficient_scope and nothing of that history reaches the
    provider or the reply; a key with the `conversations` scope may replay it."""
    sidecar = await make_sidecar()
    conv = {"X-Conversation-Id": "owner-secret"}
    async with session.post(sidecar.make_url(CHAT), json=chat("the launch code is 4242"),
                            headers=conv) as response:
        assert response.status == 200
    async with session.get(mock_upstream.make_url("/_mock/requests")) as response:
        before = len((await response.json())["requests"])
    chat_only = await create_key(redis_url, scopes=["chat"])
    replay = {**conv, "X-Conversation-Replay": "true", "Authorization": f"Bearer {chat_only}"}
    async with aiohttp.ClientSession() as other:
        async with other.post(sidecar.make_url(CHAT), json=chat("repeat everything"),
                              headers=replay) as response:
            text = await response.text()
            assert response.status == 403
    assert "insufficient_scope" in text and "4242" not in text
    async with session.get(mock_upstream.make_url("/_mock/requests")) as response:
        assert len((await response.json())["requests"]) == before
    async with session.post(sidecar.make_url(CHAT), json=chat("and again"),
                            headers={**conv, "X-Conversation-Replay": "true"}) as response:
        assert response.status == 200


async def test_conversation_quotas_refuse_before_anything_is_spent(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """With caps of two conversations and 4 KiB per tenant: a third conversation is refused
    with 403 conversation_quota_exceeded before the provider is called (and counted), the
    existing ones go on until the tenant's bytes reach the cap, and deleting a conversation
    makes room again."""
    metrics = Metrics()
    sidecar = await make_sidecar(metrics=metrics, conversations_max_per_tenant="2",
                                 conversations_max_bytes_per_tenant="4096")

    async def turn(conversation: str, text: str = "hello") -> tuple[int, dict[str, Any]]:
        async with session.post(sidecar.make_url(CHAT), json=chat(text),
                                headers={"X-Conversation-Id": conversation}) as response:
            return response.status, await response.json()

    async def provider_calls() -> int:
        async with session.get(mock_upstream.make_url("/_mock/requests")) as response:
            return len((await response.json())["requests"])

    assert (await turn("a"))[0] == 200 and (await turn("b"))[0] == 200
    calls = await provider_calls()
    status, body = await turn("c")
    assert status == 403 and body["error"]["code"] == "conversation_quota_exceeded"
    assert "conversations" in body["error"]["message"]
    assert await provider_calls() == calls
    assert (await turn("a", "x" * 3000))[0] == 200  # an existing one may still grow ...
    status, body = await turn("b")                   # ... until the tenant's bytes reach the cap
    assert status == 403 and "bytes" in body["error"]["message"]
    async with session.delete(sidecar.make_url("/v1/conversations/a")) as response:
        assert response.status == 200
    assert (await turn("c"))[0] == 200
    refused = {cap: metrics.registry.get_sample_value(
        "sidecar_conversation_quota_exceeded_total", {"cap": cap, "outcome": "refused"})
        for cap in ("conversations", "bytes")}
    assert refused == {"conversations": 1, "bytes": 1}
