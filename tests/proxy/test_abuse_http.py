"""Model-extraction policy as a client sees it: blocked with 403 for the cool-down."""

from __future__ import annotations

import aiohttp

from sidecar.metrics import Metrics
from tests.conftest import SidecarFactory

CHAT = "/v1/chat/completions"


async def test_volume_block_answers_403_and_counts(make_sidecar: SidecarFactory,
                                                   session: aiohttp.ClientSession) -> None:
    """Past the key's request threshold with policy block, the key gets 403 abuse_detected with
    Retry-After, and the signal is counted."""
    metrics = Metrics()
    sidecar = await make_sidecar(metrics=metrics, abuse_key_requests="3", abuse_volume_policy="block",
                                 abuse_cooldown_s="60")
    statuses = []
    for i in range(5):
        body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"question {i}"}]}
        async with session.post(sidecar.make_url(CHAT), json=body) as response:
            statuses.append(response.status)
            if response.status == 403:
                assert (await response.json())["error"]["code"] == "abuse_detected"
                assert int(response.headers["Retry-After"]) > 0
    assert statuses[:2] == [200, 200] and set(statuses[2:]) == {403}  # the threshold is reached at 3
    assert metrics.blocked.labels("chat", "abuse_detected")._value.get() >= 1
    assert sum(s.value for s in metrics.abuse_suspects.collect()[0].samples
               if s.name.endswith("_total")) >= 1
