"""API keys on the request path: refusals without an oracle, argon2 once, revocation everywhere."""

from __future__ import annotations

import asyncio
import secrets
import time

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict

from sidecar.appstate import AUTH
from sidecar.auth.keyformat import checksum, make_key, parse_key
from tests.conftest import RedisProcess, SidecarFactory, create_key
from tests.procs import SidecarProcess

CHAT = "/v1/chat/completions"
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}


def with_checksum(body: str) -> str:
    return f"{body}_{checksum(body)}"


async def post_with(session: aiohttp.ClientSession, url: str, key: str | None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {"Authorization": ""}
    async with session.post(url, json=BODY, headers=headers) as response:
        return response.status, await response.json()


async def test_refusals_look_the_same(make_sidecar: SidecarFactory, redis_url: str,
                                      redis_proc: RedisProcess) -> None:
    """Malformed, bad-checksum, unknown, wrong-secret, revoked and expired keys get one body."""
    sidecar = await make_sidecar()
    url = str(sidecar.make_url(CHAT))
    good = await create_key(redis_url)
    revoked = await create_key(redis_url)
    expired = await create_key(redis_url)
    parsed_good, parsed_revoked, parsed_expired = map(parse_key, (good, revoked, expired))
    assert parsed_good and parsed_revoked and parsed_expired
    admin = redis_proc.client()
    admin.hset(f"sk:{{t:tenant-a}}:{parsed_revoked.key_id}", "status", "revoked")
    admin.hset(f"sk:{{t:tenant-a}}:{parsed_expired.key_id}", "expires_at", repr(time.time() - 1))
    wrong_secret = with_checksum(f"sks_{parsed_good.key_id}_" + "A" * 43)
    candidates = {
        "malformed": "not-a-key",
        "bad checksum": good[:-1] + ("A" if good[-1] != "A" else "B"),
        "unknown id": make_key("Zz0Zz0Zz0Zz0"),
        "wrong secret": wrong_secret,
        "revoked": revoked,
        "expired": expired,
    }
    bodies = {}
    async with aiohttp.ClientSession() as session:
        status, _ = await post_with(session, url, good)
        assert status == 200
        for name, key in candidates.items():
            status, body = await post_with(session, url, key)
            assert status == 401, name
            body["error"].pop("request_id")
            bodies[name] = body
        status, missing = await post_with(session, url, None)
    assert status == 401 and missing["error"]["code"] == "missing_api_key"
    assert len({orjson.dumps(b) for b in bodies.values()}) == 1, bodies
    assert next(iter(bodies.values()))["error"]["code"] == "invalid_api_key"


async def test_key_in_query_string_is_not_accepted(make_sidecar: SidecarFactory, api_key: str) -> None:
    """A key in the URL is ignored (keys in URLs end up in logs): the request is refused."""
    sidecar = await make_sidecar()
    async with aiohttp.ClientSession() as session:
        async with session.post(sidecar.make_url(CHAT), json=BODY,
                                params={"api_key": api_key}) as response:
            assert response.status == 401


async def test_x_api_key_header_works(make_sidecar: SidecarFactory, api_key: str) -> None:
    """X-API-Key is accepted as an alternative to Authorization: Bearer."""
    sidecar = await make_sidecar()
    async with aiohttp.ClientSession() as session:
        async with session.post(sidecar.make_url(CHAT), json=BODY,
                                headers={"X-API-Key": api_key}) as response:
            assert response.status == 200


async def test_argon2_runs_once_for_a_thousand_requests(make_sidecar: SidecarFactory,
                                                        session: aiohttp.ClientSession) -> None:
    """1,000 requests with one key (50 at a time) cost one argon2 verification in the process."""
    sidecar = await make_sidecar()
    url = sidecar.make_url("/v1/models")

    async def one() -> int:
        async with session.get(url) as response:
            return response.status

    statuses: list[int] = []
    for _ in range(20):
        statuses += await asyncio.gather(*(one() for _ in range(50)))
    assert statuses == [200] * 1000
    assert sidecar.app[AUTH].hasher.verifications == 1


@pytest.mark.parametrize("scopes,route,status", [
    (["models"], "/v1/chat/completions", 403),
    (["chat"], "/v1/chat/completions", 200),
    (["chat"], "/v1/embeddings", 403),
    (["embeddings"], "/v1/embeddings", 200),
    (["chat"], "/v1/models", 403),
])
async def test_scopes_are_checked_per_route(make_sidecar: SidecarFactory, redis_url: str,
                                            scopes: list[str], route: str, status: int) -> None:
    """A key is allowed only the routes its scopes name; others get 403 insufficient_scope."""
    sidecar = await make_sidecar()
    key = await create_key(redis_url, scopes=scopes)
    body = {"model": "m", "input": "x"} if "embeddings" in route else BODY
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        method = session.get if route == "/v1/models" else session.post
        async with method(sidecar.make_url(route), json=body) as response:
            assert response.status == status
            if status == 403:
                assert (await response.json())["error"]["code"] == "insufficient_scope"


async def test_wrong_secrets_cannot_stall_valid_traffic(make_sidecar: SidecarFactory,
                                                        redis_url: str) -> None:
    """200 concurrent wrong secrets for a real key id run at most the capped number of argon2
    verifications at once, stop being verified once the failure budget is spent, and valid
    requests keep succeeding meanwhile."""
    sidecar = await make_sidecar()
    good = await create_key(redis_url)
    parsed = parse_key(good)
    assert parsed is not None
    wrong = [with_checksum(f"sks_{parsed.key_id}_" + f"{i:043d}") for i in range(200)]
    url = str(sidecar.make_url("/v1/models"))
    async with aiohttp.ClientSession() as session:

        async def status_of(key: str) -> int:
            async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
                return response.status

        assert await status_of(good) == 200
        attack = asyncio.gather(*(status_of(k) for k in wrong))
        valid = await asyncio.gather(*(status_of(good) for _ in range(50)))
        refused = await attack
    hasher = sidecar.app[AUTH].hasher
    assert valid == [200] * 50
    assert refused == [401] * 200
    assert hasher.peak_running <= hasher.max_concurrent == 2
    assert hasher.verifications <= 1 + 20 + hasher.max_concurrent


async def test_revocation_reaches_another_process_within_a_second(
    redis_url: str, mock_upstream: object, api_key: str,
) -> None:
    """A key revoked through sidecar A's admin API is refused by sidecar B within 1 s."""
    token = secrets.token_urlsafe(32)
    upstream = str(mock_upstream.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    env = {"SIDECAR_STORE_URL": redis_url, "SIDECAR_UPSTREAM_URL": upstream,
           "SIDECAR_ADMIN_TOKEN": token}
    a, b = SidecarProcess(env), SidecarProcess(env)
    await asyncio.gather(a.start(), b.start())
    parsed = parse_key(api_key)
    assert parsed is not None
    try:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {api_key}"}
            for sidecar in (a, b):  # both have verified and cached the key
                async with session.get(sidecar.url + "/v1/models", headers=headers) as response:
                    assert response.status == 200
            async with session.post(f"{a.admin_url}/admin/keys/{parsed.key_id}/revoke",
                                    headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200
            revoked_at = time.monotonic()
            while True:
                async with session.get(b.url + "/v1/models", headers=headers) as response:
                    if response.status == 401:
                        break
                assert time.monotonic() - revoked_at < 1.0, "B still accepts the revoked key"
                await asyncio.sleep(0.01)
    finally:
        for sidecar in (a, b):
            status, err = await sidecar.stop()
            assert status == 0
            assert api_key not in err


async def test_no_raw_key_is_stored(redis_url: str, redis_proc: RedisProcess) -> None:
    """After creating and rotating keys, no key, field or value anywhere in Redis holds a raw key."""
    keys = [await create_key(redis_url, tenant=f"t{i}") for i in range(5)]
    secrets_ = [k.split("_")[2] for k in keys]
    client = redis_proc.client()
    seen = b""
    for name in client.scan_iter(count=1000):
        seen += name
        kind = client.type(name)
        if kind == b"hash":
            for field, value in client.hgetall(name).items():
                seen += field + value
        elif kind == b"set":
            seen += b"".join(client.smembers(name))
        elif kind == b"string":
            seen += client.get(name) or b""
    assert seen
    for key, secret in zip(keys, secrets_, strict=True):
        assert key.encode() not in seen and secret.encode() not in seen


@pytest.mark.parametrize("headers", [
    [("Authorization", "Bearer {key}"), ("Authorization", "Bearer {key}")],
    [("Authorization", "Bearer {key}"), ("X-API-Key", "{key}")],
    [("Authorization", "Basic dXNlcjpwYXNz"), ("X-API-Key", "{key}")],
    [("X-API-Key", "{key}"), ("X-API-Key", "{key}")],
], ids=["two-authorization", "bearer-and-x-api-key", "basic-and-x-api-key", "two-x-api-key"])
async def test_two_credentials_are_a_400(make_sidecar: SidecarFactory, api_key: str,
                                         headers: list[tuple[str, str]]) -> None:
    """A request that carries a key twice, or in both headers, is refused with a 400 that says
    so, instead of one of them silently winning."""
    sidecar = await make_sidecar()
    sent = CIMultiDict((name, value.format(key=api_key)) for name, value in headers)
    async with aiohttp.ClientSession() as session:
        async with session.post(sidecar.make_url(CHAT), json=BODY, headers=sent) as response:
            body = await response.json()
            assert response.status == 400
    assert body["error"]["code"] == "invalid_request"
    assert "once" in body["error"]["message"]


async def test_a_guesser_who_knows_a_key_id_cannot_lock_its_owner_out(
        make_sidecar: SidecarFactory, redis_url: str) -> None:
    """Key ids are public. A guesser spends the failure budget of two key ids (25 wrong secrets
    each, from its own address, and for one of them from the owner's address too); once the
    verified cache entry has expired, the owner's key that this sidecar verified before and a
    key never used before are still accepted, while argon2 stays capped (at most two at once,
    at most the budget per key id and address)."""
    sidecar = await make_sidecar(auth_cache_ttl_s="1")
    used, fresh = await create_key(redis_url), await create_key(redis_url)
    used_id, fresh_id = parse_key(used), parse_key(fresh)
    assert used_id is not None and fresh_id is not None
    url = str(sidecar.make_url("/v1/models"))

    async def statuses(session: aiohttp.ClientSession, keys: list[str]) -> list[int]:
        async def one(key: str) -> int:
            async with session.get(url, headers={"Authorization": f"Bearer {key}"}) as response:
                return response.status
        return list(await asyncio.gather(*(one(k) for k in keys)))

    def wrong(key_id: str) -> list[str]:
        return [with_checksum(f"sks_{key_id}_" + secrets.token_hex(22)[:43]) for _ in range(25)]

    guesser_address = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession() as owner, \
            aiohttp.ClientSession(connector=guesser_address) as guesser:
        assert await statuses(owner, [used]) == [200]
        refused = await statuses(guesser, wrong(used_id.key_id) + wrong(fresh_id.key_id))
        refused += await statuses(owner, wrong(used_id.key_id))  # the same address as the owner
        await asyncio.sleep(1.1)  # the scenario: the owner's cache entry (TTL 1 s) has expired
        assert await statuses(owner, [used, fresh, used]) == [200, 200, 200]
    assert refused == [401] * 75
    hasher = sidecar.app[AUTH].hasher
    assert hasher.peak_running <= hasher.max_concurrent == 2
    assert hasher.verifications <= 2 + 3 * 20 + 3 * hasher.max_concurrent
