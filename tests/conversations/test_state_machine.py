"""Random interleavings of store, history/replay, list, read and delete by several tenants and
keys, on a real redis-server, against a plain in-memory model: no operation ever returns,
counts or deletes another tenant's data."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from sidecar.conversations import ConversationService, NewMessage, select_for_replay
from sidecar.settings import ConversationSettings, StoreSettings
from sidecar.store.redis import connect
from tests.conftest import RedisProcess
from tests.conversations.conftest import keyring_of, new_master

TENANTS = ("acme", "globex", "acme.eu")
KEYS = {t: (f"{t}-k1", f"{t}-k2") for t in TENANTS}
IDS = ("c1", "c2", "shared")  # every tenant uses the same ids
MAX_MESSAGES = 5


def build_machine(redis_proc: RedisProcess, encrypted: bool) -> type[RuleBasedStateMachine]:
    class ConversationMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            redis_proc.client().flushall()
            self.loop = asyncio.new_event_loop()
            self.store = self.loop.run_until_complete(
                connect(StoreSettings(url=redis_proc.url, timeout_s=2.0)))
            self.service = ConversationService(
                self.store, ConversationSettings(max_messages=MAX_MESSAGES),
                keyring_of(new_master()) if encrypted else None)
            # (tenant, id) -> list of (text, detected); plus the key that wrote last
            self.model: dict[tuple[str, str], list[tuple[str, bool]]] = {}
            self.writer: dict[tuple[str, str], str] = {}
            self.turns = 0

        def run(self, coro: Any) -> Any:
            return self.loop.run_until_complete(coro)

        def teardown(self) -> None:
            self.run(self.store.close())
            self.loop.close()

        def text(self, tenant: str, conv: str) -> str:
            self.turns += 1
            return f"{tenant}|{conv}|{self.turns}"

        @rule(tenant=st.sampled_from(TENANTS), conv=st.sampled_from(IDS), key=st.integers(0, 1),
              flags=st.lists(st.booleans(), min_size=1, max_size=3))
        def store_turn(self, tenant: str, conv: str, key: int, flags: list[bool]) -> None:
            texts = [(self.text(tenant, conv), flag) for flag in flags]
            messages = [NewMessage.of({"role": "user", "content": t}, 0.9 if f else 0.1, f)
                        for t, f in texts]
            key_id = KEYS[tenant][key]
            result = self.run(self.service.append(tenant, key_id, conv, messages, f"req_{self.turns}"))
            kept = (self.model.get((tenant, conv), []) + texts)[-MAX_MESSAGES:]
            self.model[(tenant, conv)] = kept
            self.writer[(tenant, conv)] = key_id
            assert result.stored and result.message_count == len(kept)

        @rule(tenant=st.sampled_from(TENANTS), conv=st.sampled_from(IDS))
        def read(self, tenant: str, conv: str) -> None:
            got = self.run(self.service.get(tenant, conv))
            expected = self.model.get((tenant, conv))
            if expected is None:
                assert got is None
                return
            assert got is not None
            assert [(m.payload["content"], m.detected) for m in got.messages] == expected
            assert got.summary.message_count == len(expected)
            assert got.summary.key_id == self.writer[(tenant, conv)]

        @rule(tenant=st.sampled_from(TENANTS), conv=st.sampled_from(IDS))
        def replay(self, tenant: str, conv: str) -> None:
            history = self.run(self.service.history(tenant, conv))
            replayed = select_for_replay(history, 10_000, lambda m: 1)
            expected = [t for t, flagged in self.model.get((tenant, conv), []) if not flagged]
            assert [m["content"] for m in replayed] == expected

        @rule(tenant=st.sampled_from(TENANTS), page=st.integers(1, 3))
        def listing(self, tenant: str, page: int) -> None:
            seen: list[str] = []
            cursor = None
            for _ in range(len(IDS) + 1):
                result = self.run(self.service.list(tenant, page, cursor))
                seen.extend(s.id for s in result.items)
                for s in result.items:
                    assert s.message_count == len(self.model[(tenant, s.id)])
                    assert s.key_id in KEYS[tenant]
                cursor = result.cursor
                if cursor is None:
                    break
            assert sorted(seen) == sorted(c for t, c in self.model if t == tenant)

        @rule(tenant=st.sampled_from(TENANTS), conv=st.sampled_from(IDS))
        def delete(self, tenant: str, conv: str) -> None:
            deleted = self.run(self.service.delete(tenant, conv))
            assert deleted == ((tenant, conv) in self.model)
            self.model.pop((tenant, conv), None)
            self.writer.pop((tenant, conv), None)

        @invariant()
        def every_key_is_a_live_tenant_key_with_a_ttl(self) -> None:
            client: Any = redis_proc.client()
            for key in client.scan_iter(count=1000):
                text = key.decode()
                assert any(f"{{t:{t}}}" in text for t in TENANTS)
                assert client.pttl(key) > 0
                if text.startswith("conv:"):
                    tenant = text[len("conv:{t:"):text.index("}")]
                    assert (tenant, text.rsplit(":", 1)[1]) in self.model

    return ConversationMachine


@pytest.mark.parametrize("encrypted", [False, True])
def test_tenants_never_see_each_others_conversations(redis_proc: RedisProcess, encrypted: bool) -> None:
    """Every read, replay, listing and delete agrees with a per-tenant model, in any interleaving."""
    machine = build_machine(redis_proc, encrypted)
    run_state_machine_as_test(machine, settings=settings(max_examples=30, stateful_step_count=25,
                                                         deadline=None))
