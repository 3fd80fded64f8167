"""The admin API: token required, keys managed over HTTP, and its OpenAPI document holds."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from sidecar.admin import OPENAPI
from tests.conftest import CHEAP_ARGON2, RedisProcess, free_port

TOKEN = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def admin_url(redis_proc: RedisProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sidecar process with the admin listener on, on the session's Redis."""
    port, metrics = free_port(), free_port()
    env = {**os.environ, **CHEAP_ARGON2, "SIDECAR_STORE_URL": redis_proc.url.replace("/0", "/3"),
           "SIDECAR_ADMIN_TOKEN": TOKEN, "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{port}",
           # schemathesis sends many requests without the token on purpose: not a guesser here
           "SIDECAR_ADMIN_FAILURES_PER_MINUTE": "100000", "SIDECAR_ADMIN_FAILURE_DELAY_S": "0",
           "SIDECAR_LISTEN": f"127.0.0.1:{free_port()}", "SIDECAR_METRICS_LISTEN": f"127.0.0.1:{metrics}",
           "SIDECAR_LOG_LEVEL": "WARNING"}
    # The log goes to a file: every admin request writes an audit line, and a pipe nobody
    # reads until the end would fill up and stall the sidecar.
    log_path = tmp_path_factory.mktemp("admin") / "stderr.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "sidecar did not start"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)
    log_file.close()
    assert proc.returncode == 0
    assert b"Traceback" not in log_path.read_bytes()


async def test_token_is_required(admin_url: str) -> None:
    """A missing or wrong admin token gets 401 on every key route."""
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with session.get(admin_url + "/admin/keys?tenant=a", headers=headers) as response:
                assert response.status == 401
                assert (await response.json())["error"]["code"] == "invalid_admin_token"
            async with session.post(admin_url + "/admin/keys", headers=headers,
                                    json={"tenant": "a", "scopes": ["chat"]}) as response:
                assert response.status == 401


async def test_key_lifecycle_over_http(admin_url: str) -> None:
    """Create shows the key once; list, show, patch, rotate and revoke work and never show it again."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.post(admin_url + "/admin/keys", json={
            "tenant": "life", "scopes": ["chat"], "limits": [{"window_s": 60, "requests": 5}],
            "label": "ci"}) as response:
            assert response.status == 201
            created = await response.json()
        key, key_id = created["key"], created["key_id"]
        assert key.startswith("sks_") and created["status"] == "active"
        async with session.get(admin_url + "/admin/keys?tenant=life") as response:
            listing = await response.text()
        async with session.patch(admin_url + f"/admin/keys/{key_id}",
                                 json={"label": "renamed", "scopes": ["chat", "models"]}) as response:
            patched = await response.json()
        assert patched["label"] == "renamed" and patched["scopes"] == ["chat", "models"]
        async with session.post(admin_url + f"/admin/keys/{key_id}/rotate",
                                json={"grace_s": 60}) as response:
            assert response.status == 201
            rotated = await response.json()
        assert rotated["lineage"] == key_id and rotated["previous"]["expires_at"] is not None
        async with session.post(admin_url + f"/admin/keys/{key_id}/revoke") as response:
            assert (await response.json())["status"] == "revoked"
        async with session.get(admin_url + f"/admin/keys/{key_id}") as response:
            shown = await response.text()
        async with session.post(admin_url + "/admin/keys", json={"tenant": "bad tenant!",
                                                                 "scopes": ["chat"]}) as response:
            assert response.status == 400
            assert "tenant" in (await response.json())["error"]["message"]
    assert key not in listing and key not in shown and key_id in listing


schema = schemathesis.openapi.from_dict(OPENAPI)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=True)
def test_admin_api_conforms_to_its_schema(case: schemathesis.Case, admin_url: str) -> None:
    """Generated requests never get a 5xx and every answer matches the OpenAPI document."""
    case.call_and_validate(base_url=admin_url, headers={"Authorization": f"Bearer {TOKEN}"})


async def test_a_key_names_only_a_configured_policy(admin_url: str) -> None:
    """`policy` on create and PATCH must be a policy the settings define (400 names the choice);
    the served OpenAPI document lists the configured names."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.post(admin_url + "/admin/keys", json={
                "tenant": "pol", "scopes": ["chat"], "policy": "nonexistent"}) as response:
            assert response.status == 400
            assert "configured: default" in (await response.json())["error"]["message"]
        async with session.post(admin_url + "/admin/keys", json={
                "tenant": "pol", "scopes": ["chat"], "policy": "default"}) as response:
            created = await response.json()
        assert created["policy"] == "default"
        async with session.patch(admin_url + f"/admin/keys/{created['key_id']}",
                                 json={"policy": ""}) as response:
            assert (await response.json())["policy"] is None
        async with session.get(admin_url + "/admin/openapi.json") as response:
            doc = await response.json()
    schema = doc["paths"]["/admin/keys"]["post"]["requestBody"]["content"]["application/json"]
    assert schema["schema"]["properties"]["policy"]["enum"] == ["", "default", None]


async def test_admin_answers_name_no_versions(admin_url: str) -> None:
    """No admin answer (success, refusal, unknown URL) names the Python or aiohttp version."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        for path, headers in (("/admin/keys?tenant=a", auth), ("/admin/keys?tenant=a", {}),
                              ("/admin/nothing", auth), ("/admin/openapi.json", {})):
            async with session.get(admin_url + path, headers=headers) as response:
                server = response.headers.get("Server", "")
                assert "Python" not in server and "aiohttp" not in server, (path, server)


async def test_models_allow_list_over_http(admin_url: str) -> None:
    """`models` is set on create, changed by PATCH, cleared with [], and checked for shape."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(admin_url + "/admin/keys", json={
                "tenant": "models", "scopes": ["chat", "messages"],
                "models": ["gpt-4o-mini", "claude-*"]}) as response:
            created = await response.json()
            assert response.status == 201, created
        assert created["models"] == ["gpt-4o-mini", "claude-*"]
        url = f"{admin_url}/admin/keys/{created['key_id']}"
        async with session.patch(url, json={"models": ["claude-3-*"]}) as response:
            assert (await response.json())["models"] == ["claude-3-*"]
        async with session.patch(url, json={"models": []}) as response:
            assert (await response.json())["models"] == []
        async with session.patch(url, json={"models": "gpt-4o"}) as response:
            assert response.status == 400
            assert "models:" in (await response.json())["error"]["message"]
