"""The official openai client, pointed at the sidecar, works as against the provider."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import SidecarFactory


@pytest.fixture
async def client(make_sidecar: SidecarFactory, api_key: str) -> openai.AsyncOpenAI:
    server = await make_sidecar()
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=api_key,
                              max_retries=0)


async def test_chat_completion(client: openai.AsyncOpenAI) -> None:
    """A plain chat completion comes back with the provider's reply and usage."""
    reply = await client.chat.completions.create(
        model="mock-echo", messages=[{"role": "user", "content": "say hello"}])
    assert reply.choices[0].message.content == "say hello"
    assert reply.usage is not None and reply.usage.total_tokens > 0


async def test_chat_completion_streaming(client: openai.AsyncOpenAI) -> None:
    """A streamed chat completion arrives as chunks that join into the whole reply."""
    stream = await client.chat.completions.create(
        model="mock-echo", stream=True,
        messages=[{"role": "user", "content": "one two three four"}])
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(parts) == "one two three four"
    assert len([p for p in parts if p]) == 4


async def test_streaming_with_usage(client: openai.AsyncOpenAI) -> None:
    """stream_options.include_usage gives the client a final usage chunk."""
    stream = await client.chat.completions.create(
        model="mock-gpt", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}])
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_completion(client: openai.AsyncOpenAI) -> None:
    """A legacy completion works."""
    reply = await client.completions.create(model="mock-gpt", prompt="Once upon a time")
    assert reply.choices[0].text


async def test_embedding(client: openai.AsyncOpenAI) -> None:
    """Embeddings (the client asks for base64 by default) decode to vectors, one per input."""
    reply = await client.embeddings.create(model="mock-embed", input=["a", "b", "c"])
    assert [d.index for d in reply.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in reply.data)


async def test_models(client: openai.AsyncOpenAI) -> None:
    """Models can be listed and retrieved."""
    page = await client.models.list()
    ids = [m.id async for m in page]
    assert "mock-gpt" in ids
    model = await client.models.retrieve("mock-gpt")
    assert model.id == "mock-gpt"


async def test_unknown_model_is_relayed(client: openai.AsyncOpenAI) -> None:
    """A provider 4xx (unknown model) reaches the client as the provider's error, not a 502."""
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(
            model="does-not-exist", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"
