"""The conversation store on a real 3-master Redis Cluster: every operation is one script on the
tenant's slot (no CROSSSLOT), and tenants spread over the masters."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.conversations import ConversationService, NewMessage, conversation_key, index_key
from sidecar.settings import ConversationSettings, StoreSettings
from sidecar.store.redis import connect
from tests.cluster import RedisClusterNodes, redis_cluster  # noqa: F401  (fixture)
from tests.conversations.conftest import keyring_of, new_master

pytestmark = pytest.mark.cluster


async def test_conversations_work_on_a_cluster(redis_cluster: RedisClusterNodes) -> None:  # noqa: F811
    """Store, read, list, delete for 30 tenants succeed on a 3-master cluster; each tenant's keys
    share one slot; every master holds some tenant's conversations; every key has a TTL."""
    redis_cluster.flush()
    store = await connect(StoreSettings(url=redis_cluster.url, timeout_s=2.0))
    service = ConversationService(store, ConversationSettings(max_messages=4),
                                  keyring_of(new_master()))
    tenants = [f"tenant-{n}" for n in range(30)]
    try:
        for tenant in tenants:
            for conv in ("c1", "c2"):
                for turn in range(3):
                    await service.append(tenant, "k", conv, [
                        NewMessage.of({"role": "user", "content": f"{tenant} {conv} {turn}"}),
                        NewMessage.of({"role": "assistant", "content": "ok"})], f"req_{turn}")
        for tenant in tenants:
            page = await service.list(tenant, 10)
            assert sorted(s.id for s in page.items) == ["c1", "c2"]
            history = await service.history(tenant, "c1")
            assert [m.payload["content"] for m in history] == [f"{tenant} c1 1", "ok",
                                                               f"{tenant} c1 2", "ok"]
            assert await service.delete(tenant, "c2")
            assert [s.id for s in (await service.list(tenant)).items] == ["c1"]
    finally:
        await store.close()
    client: Any = redis_cluster.cluster_client()
    try:
        for tenant in tenants:
            slot = client.keyslot(conversation_key(tenant, "c1"))
            assert client.keyslot(index_key(tenant)) == slot
        holders = 0
        for port in redis_cluster.ports:
            node = redis_cluster.client(port)
            keys = list(node.scan_iter(count=1000))
            holders += bool(keys)
            for key in keys:
                assert key.startswith((b"conv:{t:", b"convidx:{t:", b"convsize:{t:")) \
                    and node.pttl(key) > 0
        assert holders == 3
    finally:
        client.close()
