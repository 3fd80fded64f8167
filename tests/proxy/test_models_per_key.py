"""Models per key: a key's allow-list of names and glob patterns decides which models it may
call (403 model_not_allowed before anything is spent) and which `GET /v1/models` shows."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from tests.conftest import CHEAP_ARGON2, CREATED_KEYS, SidecarFactory, create_key
from tests.proxy.test_text_slots import received


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


async def test_a_model_outside_the_allow_list_is_refused_before_anything_is_spent(
        make_sidecar: SidecarFactory, mock_upstream: TestServer, redis_url: str) -> None:
    """403 model_not_allowed on every API (Anthropic's shape on /v1/messages); the provider
    hears nothing and the key's one-request limit is still unspent afterwards."""
    sidecar = await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"))
    key = await create_key(redis_url, models=["mock-echo", "claude-*"],
                           limits=[{"window_s": 60, "requests": 3}])
    headers = {"Authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for path, body in (("/v1/chat/completions", chat("mock-gpt")),
                           ("/v1/responses", {"model": "gpt-4o", "input": "hi"}),
                           ("/v1/messages", {"model": "mock-gpt", "max_tokens": 5,
                                             "messages": [{"role": "user", "content": "hi"}]})):
            async with session.post(sidecar.make_url(path), json=body) as response:
                error = await response.json()
                assert response.status == 403, error
            assert error["error"]["code"] == "model_not_allowed", error
            if path == "/v1/messages":
                assert error["type"] == "error" and error["error"]["type"] == "permission_error"
        assert await received(session, mock_upstream) == []
        for path, body in (("/v1/chat/completions", chat("mock-echo")),
                           ("/v1/responses", {"model": "mock-echo", "input": "hi"}),
                           ("/v1/messages", {"model": "claude-mock-1", "max_tokens": 5,
                                             "messages": [{"role": "user", "content": "hi"}]})):
            async with session.post(sidecar.make_url(path), json=body) as response:
                assert response.status == 200, await response.text()


async def test_the_model_list_shows_only_allowed_models(
        make_sidecar: SidecarFactory, redis_url: str) -> None:
    """GET /v1/models lists only what the key may call; retrieving another model is a 403;
    a key without an allow-list sees every model."""
    sidecar = await make_sidecar()
    limited = await create_key(redis_url, models=["mock-e*"])
    everyone = await create_key(redis_url)
    async with aiohttp.ClientSession() as session:
        async def ids(key: str) -> list[str]:
            async with session.get(sidecar.make_url("/v1/models"),
                                   headers={"Authorization": f"Bearer {key}"}) as response:
                assert response.status == 200
                return [m["id"] for m in (await response.json())["data"]]

        assert await ids(limited) == ["mock-echo", "mock-embed"]
        assert await ids(everyone) == ["mock-gpt", "mock-echo", "mock-embed"]
        async with session.get(sidecar.make_url("/v1/models/mock-gpt"),
                               headers={"Authorization": f"Bearer {limited}"}) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == "model_not_allowed"


def test_the_cli_sets_an_allow_list(redis_url: str) -> None:
    """`sidecar keys create --models a,b*` stores the list; a malformed one exits 2."""
    env = {**os.environ, **CHEAP_ARGON2, "SIDECAR_STORE_URL": redis_url}
    created = subprocess.run(
        [sys.executable, "-m", "sidecar", "keys", "create", "--tenant", "t", "--json",
         "--models", "gpt-4o-mini, claude-*"], env=env, capture_output=True, text=True, check=True)
    record = orjson.loads(created.stdout)
    CREATED_KEYS.add(record["key"])
    assert record["models"] == ["gpt-4o-mini", "claude-*"]
    bad = subprocess.run(
        [sys.executable, "-m", "sidecar", "keys", "create", "--tenant", "t", "--models", "a b"],
        env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "models:" in bad.stderr
