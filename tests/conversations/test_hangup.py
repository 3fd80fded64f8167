"""A client that hangs up right after reading its reply still gets its turn stored, and the
request is logged and counted with the status the client received."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp.test_utils import TestServer

from sidecar.conversations import ConversationService
from sidecar.settings import ConversationSettings, StoreSettings
from sidecar.store.redis import connect
from tests.conftest import RedisProcess
from tests.faults.proxy import FaultProxy
from tests.procs import SidecarProcess

CHAT = "/v1/chat/completions"


async def post_and_hang_up(port: int, key: str, body: dict[str, object],
                           headers: dict[str, str]) -> tuple[int, bytes]:
    """One request over a fresh connection, as curl or a one-shot script sends it: read the
    whole reply (Content-Length), then close the connection at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = orjson.dumps(body)
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    writer.write((f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n{head}"
                  "\r\n").encode() + payload)
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    reply = await reader.readexactly(length)
    writer.transport.abort()  # hang up now, as the one-shot client does
    return int(status_line.split()[1]), reply


def counted(text: str, route: str, code: str) -> float:
    prefix = f'sidecar_requests_total{{code="{code}",route="{route}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


async def test_turn_is_stored_when_the_client_hangs_up_after_its_reply(
    mock_upstream: TestServer, redis_proc: RedisProcess, redis_url: str, api_key: str,
) -> None:
    """With the store slow to answer (every Redis reply held 0.3 s), a client that closes its
    connection as soon as it has its 200 still finds its turn stored, and the access log and
    `sidecar_requests_total` say 200, not 499."""
    proxy = FaultProxy("127.0.0.1", redis_proc.port)
    await proxy.start()
    sidecar = SidecarProcess({"SIDECAR_UPSTREAM_URL": str(mock_upstream.make_url("")).rstrip("/"),
                              "SIDECAR_STORE_URL": f"redis://127.0.0.1:{proxy.port}/0",
                              "SIDECAR_ABUSE_ENABLED": "false"})
    await sidecar.start()
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as s:
            async with s.post(sidecar.url + CHAT, json={  # the key is verified and cached
                    "model": "mock-echo", "messages": [{"role": "user", "content": "warm"}]}) as r:
                assert r.status == 200
        proxy.delay_s, proxy.mode = 0.3, "delay"
        status, reply = await post_and_hang_up(
            sidecar.port, api_key,
            {"model": "mock-echo", "messages": [{"role": "user", "content": "remember me"}]},
            {"X-Conversation-Id": "one-shot-1"})
        assert status == 200 and b"remember me" in reply
        proxy.mode = "pass"
        # The request is counted once the sidecar has noticed the hang-up: poll the scrape.
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(sidecar.metrics_url + "/metrics") as r:
                    scraped = await r.text()
                if counted(scraped, "chat", "200") + counted(scraped, "chat", "499") >= 2:
                    break
                assert time.monotonic() < deadline, "the request was never counted"
                await asyncio.sleep(0.05)
        assert counted(scraped, "chat", "200") == 2
        assert counted(scraped, "chat", "499") == 0
    finally:
        code, err = await sidecar.stop()
        await proxy.close()
    assert code == 0, err
    statuses = [line["status"] for line in map(orjson.loads, err.splitlines())
                if line.get("logger") == "sidecar.access"]
    assert statuses == [200, 200]

    store = await connect(StoreSettings(url=redis_url, timeout_s=2.0))
    try:
        history = await ConversationService(store, ConversationSettings(), None).history(
            "tenant-a", "one-shot-1")
    finally:
        await store.close()
    assert [(m.role, m.payload["content"]) for m in history] == [("user", "remember me"),
                                                      ("assistant", "remember me")]
