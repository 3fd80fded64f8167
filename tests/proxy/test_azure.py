"""Azure OpenAI: the client keeps calling `/v1/...` with a model name; the provider receives
its deployment path, the api-version query and the `api-key` header, and nothing else of the
client's credentials."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import SidecarFactory
from tests.proxy.test_text_slots import received

VERSION = "2024-10-21"


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def test_deployment_paths_query_and_key_header(
        make_sidecar: SidecarFactory, mock_upstream: TestServer, session: aiohttp.ClientSession,
        provider_key: str, api_key: str) -> None:
    """Chat, completions and embeddings go under the deployment (the mapped one, or the model
    name itself); Responses and models under /openai/; the provider key as `api-key`, never
    as a bearer token, and never the client's key."""
    sidecar = await make_sidecar(upstream_kind="azure", upstream_api_version=VERSION,
                                 upstream_deployments='{"gpt-4o-mini": "prod-mini"}')
    calls = [("/v1/chat/completions", chat("gpt-4o-mini")),
             ("/v1/chat/completions", chat("mock-gpt")),
             ("/v1/completions", {"model": "mock-gpt", "prompt": "hi"}),
             ("/v1/embeddings", {"model": "mock-embed", "input": "hi"}),
             ("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"})]
    for path, body in calls:
        async with session.post(sidecar.make_url(path), json=body) as response:
            assert response.status == 200, await response.text()
    async with session.get(sidecar.make_url("/v1/models")) as response:
        assert response.status == 200
    got = await received(session, mock_upstream)
    assert [(r["path"], r["query"]) for r in got] == [
        ("/openai/deployments/prod-mini/chat/completions", f"api-version={VERSION}"),
        ("/openai/deployments/mock-gpt/chat/completions", f"api-version={VERSION}"),
        ("/openai/deployments/mock-gpt/completions", f"api-version={VERSION}"),
        ("/openai/deployments/mock-embed/embeddings", f"api-version={VERSION}"),
        ("/openai/responses", f"api-version={VERSION}"),
        ("/openai/models", f"api-version={VERSION}"),
    ]
    for r in got:
        headers = {k.lower(): v for k, v in r["headers"].items()}
        assert headers["api-key"] == provider_key
        assert "authorization" not in headers and "x-api-key" not in headers
        assert api_key not in str(r)
    assert got[4]["body"]["model"] == "prod-mini"  # Responses on Azure names the deployment


async def test_v1_style_endpoint(make_sidecar: SidecarFactory, mock_upstream: TestServer,
                                 session: aiohttp.ClientSession, provider_key: str) -> None:
    """With azure_endpoint = v1, paths stay /openai/v1/..., the deployment is the body's model,
    and no api-version is sent unless one is configured."""
    sidecar = await make_sidecar(upstream_kind="azure", upstream_azure_endpoint="v1",
                                 upstream_api_version="",
                                 upstream_deployments='{"gpt-4o-mini": "prod-mini"}')
    async with session.post(sidecar.make_url("/v1/chat/completions"),
                            json=chat("gpt-4o-mini")) as response:
        assert response.status == 200
    (got,) = await received(session, mock_upstream)
    assert (got["path"], got["query"], got["body"]["model"]) == \
        ("/openai/v1/chat/completions", "", "prod-mini")
    assert got["headers"]["api-key"] == provider_key


async def test_a_model_that_is_not_a_deployment_name_never_leaves(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """A model name that would climb out of its path segment is a 400 before the provider."""
    sidecar = await make_sidecar(upstream_kind="azure")
    for model in ("../../admin", "a/b", "..", "x?y=1"):
        async with session.post(sidecar.make_url("/v1/chat/completions"),
                                json=chat(model)) as response:
            assert response.status == 400, model
    assert await received(session, mock_upstream) == []


@pytest.mark.parametrize("stream", [False, True])
async def test_the_openai_client_works_against_azure_unchanged(
        make_sidecar: SidecarFactory, mock_upstream: TestServer, api_key: str,
        stream: bool) -> None:
    """An app keeps its plain OpenAI client and base URL; the sidecar speaks Azure for it."""
    sidecar = await make_sidecar(upstream_kind="azure")
    client = openai.AsyncOpenAI(base_url=str(sidecar.make_url("/v1")), api_key=api_key,
                                max_retries=0)
    if stream:
        chunks = await client.chat.completions.create(
            model="mock-echo", stream=True, messages=[{"role": "user", "content": "one two"}])
        text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    else:
        reply = await client.chat.completions.create(
            model="mock-echo", messages=[{"role": "user", "content": "one two"}])
        text = reply.choices[0].message.content or ""
    assert text == "one two"
