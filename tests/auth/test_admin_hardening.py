"""The admin listener under attack: weak tokens refused at start, token guessers slowed then
refused, every action audited, and the same header and body deadlines as the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from tests.conftest import CHEAP_ARGON2, CREATED_KEYS
from tests.procs import SidecarProcess

TOKEN = secrets.token_urlsafe(32)
# The guesser connects from another loopback address than the operator (Linux routes all of
# 127.0.0.0/8 to lo), so the two have different client addresses.
GUESSER = "127.0.0.2"


@pytest.mark.parametrize("token,problem", [
    ("x", "at least 32 characters"),
    ("s3cr3t-" + "a" * 30, "at least 8 different characters"),
    (secrets.token_urlsafe(16)[:20], "at least 32 characters"),
])
def test_a_weak_admin_token_stops_the_start(token: str, problem: str) -> None:
    """`sidecar serve` with a short or repetitive admin token exits 2 with one line that names
    the setting and the problem, and never shows the token."""
    env = {**os.environ, "SIDECAR_ADMIN_TOKEN": token, "SIDECAR_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-m", "sidecar", "serve"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "admin.token" in done.stderr and problem in done.stderr
    assert token not in done.stderr


@pytest.fixture
async def sidecar(redis_url: str) -> AsyncIterator[SidecarProcess]:
    """A sidecar process with the admin listener on and short admin deadlines."""
    proc = SidecarProcess({"SIDECAR_STORE_URL": redis_url, "SIDECAR_ADMIN_TOKEN": TOKEN,
                           "SIDECAR_ADMIN_FAILURES_PER_MINUTE": "10",
                           "SIDECAR_ADMIN_FAILURE_DELAY_S": "0.3",
                           "SIDECAR_HEADER_TIMEOUT_S": "0.5", "SIDECAR_BODY_TIMEOUT_S": "0.5",
                           **CHEAP_ARGON2})
    await proc.start()
    yield proc
    if proc.proc is not None and proc.proc.returncode is None:
        await proc.stop()


async def test_a_token_guesser_is_slowed_then_refused(sidecar: SidecarProcess) -> None:
    """Wrong admin tokens from one address: the first few get a quick 401, later ones a slowed
    401, and past the budget every request from that address (even with the right token, so
    a 429 tells a guesser nothing) gets 429 with Retry-After; another address is unaffected."""
    url = sidecar.admin_url + "/admin/keys?tenant=a"
    wrong = {"Authorization": "Bearer " + secrets.token_urlsafe(32)}
    answers: list[tuple[int, float]] = []
    connector = aiohttp.TCPConnector(local_addr=(GUESSER, 0))
    async with aiohttp.ClientSession(connector=connector) as guesser:
        for _ in range(14):
            started = time.monotonic()
            async with guesser.get(url, headers=wrong) as response:
                answers.append((response.status, time.monotonic() - started))
                retry_after = response.headers.get("Retry-After")
        async with guesser.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            right_from_guesser = response.status
            body = await response.json()
    statuses = [status for status, _ in answers]
    assert statuses == [401] * 10 + [429] * 4
    assert all(took < 0.3 for _, took in answers[:5])    # the first five: no delay
    assert all(took >= 0.3 for _, took in answers[5:10])  # then each failure waits
    assert right_from_guesser == 429 and body["error"]["code"] == "too_many_admin_failures"
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    async with aiohttp.ClientSession() as operator:
        async with operator.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200


async def test_every_admin_action_is_one_audit_line(sidecar: SidecarProcess) -> None:
    """Create, list, show, change, rotate and revoke each write one JSON audit line naming who
    (client address and a fingerprint of the admin token), what, the key id and the tenant;
    refused attempts are audited too; no raw key and no token appears in any line."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = sidecar.admin_url + "/admin/keys"
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.post(base, json={"tenant": "audited", "scopes": ["chat"]}) as response:
            created = await response.json()
        CREATED_KEYS.add(created["key"])
        key_id = created["key_id"]
        async with session.get(base + "?tenant=audited") as response:
            assert response.status == 200
        async with session.get(f"{base}/{key_id}") as response:
            assert response.status == 200
        async with session.patch(f"{base}/{key_id}", json={"label": "x"}) as response:
            assert response.status == 200
        async with session.post(f"{base}/{key_id}/rotate", json={"grace_s": 0}) as response:
            rotated = await response.json()
        CREATED_KEYS.add(rotated["key"])
        async with session.post(f"{base}/{rotated['key_id']}/revoke") as response:
            assert response.status == 200
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(base + "?tenant=audited") as response:
            assert response.status == 401
    _, log = await sidecar.stop()
    audit = [orjson.loads(line) for line in log.splitlines()
             if line.startswith("{") and orjson.loads(line).get("logger") == "sidecar.audit"]
    assert [(a["action"], a.get("key_id"), a.get("tenant"), a["status"]) for a in audit] == [
        ("key.create", key_id, "audited", 201),
        ("key.list", None, "audited", 200),
        ("key.show", key_id, "audited", 200),
        ("key.update", key_id, "audited", 200),
        ("key.rotate", rotated["key_id"], "audited", 201),
        ("key.revoke", rotated["key_id"], "audited", 200),
        ("admin.denied", None, None, 401),
    ]
    assert all(a["client"] == "127.0.0.1" for a in audit)
    fingerprints = {a.get("admin") for a in audit[:-1]}
    assert len(fingerprints) == 1 and None not in fingerprints
    assert audit[4]["previous_key_id"] == key_id
    assert TOKEN not in log and created["key"] not in log and rotated["key"] not in log


async def test_admin_listener_has_the_proxy_deadlines(sidecar: SidecarProcess) -> None:
    """A client dripping its headers to the admin listener is disconnected at the header
    deadline; one that stops sending its body is answered 408 at the body deadline."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.admin_port)
    started = time.monotonic()

    async def drip() -> None:
        writer.write(b"GET /admin/keys?tenant=a HTTP/1.1\r\nHost: x\r\nX-Drip: ")
        with contextlib.suppress(ConnectionError):
            while True:  # one byte every 0.1 s: never a whole header block
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        dripping.cancel()
        writer.close()
    assert time.monotonic() - started < 5
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.admin_port)
    writer.write(f"POST /admin/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"tenant\":"
                 .encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
