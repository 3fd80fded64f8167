"""The conversation service on a real redis-server: storing, reading, listing, deleting,
caps (oldest trimmed first), TTLs, idempotent turns, keys and their hash tags."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.conversations import (
    NewMessage,
    conversation_key,
    decode_cursor,
    encode_cursor,
    index_key,
    valid_conversation_id,
)
from tests.conftest import RedisProcess
from tests.conversations.conftest import ServiceFactory


def user(text: str, detected: bool = False) -> NewMessage:
    return NewMessage.of({"role": "user", "content": text}, 0.9 if detected else 0.01, detected)


def assistant(text: str) -> NewMessage:
    return NewMessage.of({"role": "assistant", "content": text})


async def test_a_stored_turn_reads_back_in_order_with_verdicts(make_service: ServiceFactory) -> None:
    """Messages read back oldest first, with role, fields, verdict, key id and counts."""
    service = await make_service()
    tool = NewMessage.of({"role": "tool", "tool_call_id": "call_1", "content": "42 degrees"}, 0.1)
    await service.append("t1", "key1", "c1", [user("hello"), tool, assistant("hi")], "req_1")
    got = await service.get("t1", "c1")
    assert got is not None
    assert [m.as_openai() for m in got.messages] == [
        {"role": "user", "content": "hello"},
        {"role": "tool", "tool_call_id": "call_1", "content": "42 degrees"},
        {"role": "assistant", "content": "hi"}]
    assert [m.score for m in got.messages] == [0.01, 0.1, 0.0]
    assert got.summary.message_count == 3 and got.summary.key_id == "key1"
    assert got.summary.bytes > 0 and got.summary.created_ms <= got.summary.updated_ms


async def test_a_retried_turn_is_stored_once(make_service: ServiceFactory) -> None:
    """The same turn id twice (a retry after a lost reply) stores the messages once."""
    service = await make_service()
    first = await service.append("t1", "k", "c1", [user("once")], "req_same")
    again = await service.append("t1", "k", "c1", [user("once")], "req_same")
    assert first.stored and not again.stored
    assert [m.payload["content"] for m in await service.history("t1", "c1")] == ["once"]


@pytest.mark.parametrize(("cap", "turns", "kept"), [
    (2, 5, ["m3", "m4"]),
    (3, 3, ["m0", "m1", "m2"]),
    (4, 9, ["m5", "m6", "m7", "m8"]),
])
async def test_message_cap_trims_oldest_first(make_service: ServiceFactory, cap: int, turns: int,
                                              kept: list[str]) -> None:
    """Past max_messages, the oldest messages go and the newest stay."""
    service = await make_service(max_messages=cap)
    for n in range(turns):
        await service.append("t1", "k", "c1", [user(f"m{n}")], f"req_{n}")
    history = await service.history("t1", "c1")
    assert [m.payload["content"] for m in history] == kept
    conversation = await service.get("t1", "c1")
    assert conversation is not None and conversation.summary.message_count == len(kept)


async def test_byte_cap_trims_oldest_first(make_service: ServiceFactory,
                                           redis_proc: RedisProcess) -> None:
    """Past max_bytes, the oldest messages go until the rest fits; the byte count stays exact."""
    service = await make_service(max_bytes=1024)
    for n in range(10):
        await service.append("t1", "k", "c1", [user(f"{n}" + "x" * 300)], f"req_{n}")
    conversation = await service.get("t1", "c1")
    assert conversation is not None
    texts = [m.payload["content"][0] for m in conversation.messages]
    assert texts == [str(n) for n in range(10 - len(texts), 10)] and len(texts) >= 2
    client: Any = redis_proc.client()
    stored = client.hgetall(conversation_key("t1", "c1"))
    sizes = {int(k[2:]): len(v) for k, v in stored.items() if k.startswith(b"m:")}
    assert conversation.summary.bytes == sum(sizes.values()) <= 1024
    one = max(sizes.values())
    assert conversation.summary.bytes + one > 1024  # one more (older) message would not fit


async def test_every_key_has_a_ttl_and_the_tenant_hash_tag(make_service: ServiceFactory,
                                                           redis_proc: RedisProcess) -> None:
    """After writes, lists and deletes, every key in Redis carries a TTL within the setting and
    the tenant's hash tag."""
    service = await make_service(ttl_s=3600)
    for tenant in ("t1", "t2"):
        for conv in ("a", "b", "c"):
            await service.append(tenant, "k", conv, [user("x"), assistant("y")], f"req_{conv}")
        await service.list(tenant)
        await service.delete(tenant, "b")
    client: Any = redis_proc.client()
    keys = list(client.scan_iter(count=1000))
    assert len(keys) == 8  # two conversations, one index and one sizes hash per tenant
    for key in keys:
        assert 0 < client.pttl(key) <= 3600 * 1000
        tenant = "t1" if b"{t:t1}" in key else "t2"
        assert f"{{t:{tenant}}}".encode() in key


async def test_listing_is_newest_first_and_pages_cover_everything_once(
        make_service: ServiceFactory) -> None:
    """Pages of 2 list every conversation exactly once, most recently updated first, even when
    several were updated in the same millisecond."""
    service = await make_service()
    ids = [f"c{n:02d}" for n in range(7)]
    for conv in ids:
        await service.append("t1", "k", conv, [user("x")], "req_" + conv)
    await service.append("t1", "k", "c03", [user("again")], "req_again")  # now the newest
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await service.list("t1", 2, cursor)
        seen.extend(s.id for s in page.items)
        cursor = page.cursor
        if cursor is None:
            break
    assert sorted(seen) == ids and len(seen) == len(ids)
    whole = (await service.list("t1", 100)).items
    assert [s.id for s in whole] == seen
    order = [(s.updated_ms, s.id) for s in whole]
    assert order == sorted(order, reverse=True)
    assert whole[0].updated_ms == next(s.updated_ms for s in whole if s.id == "c03")


async def test_listing_with_equal_update_times_pages_without_gaps(make_service: ServiceFactory,
                                                                   redis_proc: RedisProcess) -> None:
    """Conversations sharing one `updated` time still page exactly once each."""
    service = await make_service()
    client: Any = redis_proc.client()
    ids = [f"c{n}" for n in range(5)]
    for conv in ids:
        await service.append("t1", "k", conv, [user("x")], "req_" + conv)
    same = max(float(s) for _, s in client.zrange(index_key("t1"), 0, -1, withscores=True))
    client.zadd(index_key("t1"), {conv: same for conv in ids})
    seen: list[str] = []
    cursor = None
    while True:
        page = await service.list("t1", 2, cursor)
        seen.extend(s.id for s in page.items)
        if page.cursor is None:
            break
        cursor = page.cursor
    assert sorted(seen) == ids and len(seen) == 5


async def test_delete_removes_the_conversation_and_its_listing(make_service: ServiceFactory) -> None:
    """A deleted conversation is gone from reads and listings; deleting again reports nothing."""
    service = await make_service()
    await service.append("t1", "k", "c1", [user("x")], "req_1")
    assert await service.delete("t1", "c1")
    assert await service.get("t1", "c1") is None
    assert (await service.list("t1")).items == ()
    assert not await service.delete("t1", "c1")


async def test_same_id_in_two_tenants_are_two_conversations(make_service: ServiceFactory) -> None:
    """Tenant B writing, reading, listing or deleting id "c1" never touches tenant A's "c1"."""
    service = await make_service()
    await service.append("A", "ka", "c1", [user("secret of A")], "req_a")
    await service.append("B", "kb", "c1", [user("text of B")], "req_b")
    assert await service.delete("B", "c1")
    assert await service.get("B", "c1") is None
    a = await service.get("A", "c1")
    assert a is not None and [m.payload["content"] for m in a.messages] == ["secret of A"]
    assert [s.id for s in (await service.list("A")).items] == ["c1"]
    assert (await service.list("B")).items == ()


# -- keys (TI-2) --------------------------------------------------------------------------------

_ANY = st.text(alphabet=st.sampled_from("ab:{}*\n\u00e9._-"), min_size=0, max_size=6)


@given(st.tuples(_ANY, _ANY), st.tuples(_ANY, _ANY))
def test_key_builder_is_injective_or_refuses(a: tuple[str, str], b: tuple[str, str]) -> None:
    """Two different (tenant, id) pairs never build the same key; odd characters are refused."""
    def build(pair: tuple[str, str]) -> str | None:
        try:
            return conversation_key(*pair)
        except ValueError:
            return None

    ka, kb = build(a), build(b)
    if ka is not None and kb is not None and a != b:
        assert ka != kb
    for pair, key in ((a, ka), (b, kb)):
        if any(c in pair[0] + pair[1] for c in ":{}*\n\u00e9") or not pair[0] or not pair[1]:
            assert key is None


@pytest.mark.parametrize(("tenant", "conv"), [("a:b", "c"), ("a", "b:c"), ("a}", "x"),
                                              ("a", "{t:b}"), ("a", "*"), ("a", "x\n"),
                                              ("a", "x" * 129), ("", "x"), ("a", "")])
def test_key_builder_refuses_separators_and_patterns(tenant: str, conv: str) -> None:
    """Tenants or ids with separators, braces, glob characters, newlines or bad lengths build no key."""
    with pytest.raises(ValueError):
        conversation_key(tenant, conv)


def test_keys_carry_the_tenant_hash_tag() -> None:
    """The conversation and its index share the tenant's hash tag (one Cluster slot)."""
    assert conversation_key("acme", "c-1.x_y") == "conv:{t:acme}:c-1.x_y"
    assert index_key("acme") == "convidx:{t:acme}"


@given(st.integers(min_value=0, max_value=10**15),
       st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True))
def test_cursor_round_trips(ms: int, conv: str) -> None:
    """A listing cursor decodes to the time and id it was made from."""
    assert valid_conversation_id(conv)
    assert decode_cursor(encode_cursor(ms, conv)) == (ms, conv)


@pytest.mark.parametrize("cursor", ["", "!!!", "x" * 300, encode_cursor(1, "a") + "*"])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    """Anything that is not one of our cursors decodes to None."""
    assert decode_cursor(cursor) is None
