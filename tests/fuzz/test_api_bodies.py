"""IN-3 for the Responses and Messages routes: any body gets a 2xx or a 4xx in that API's error
schema (OpenAI's on /v1/responses, Anthropic's on /v1/messages); never a 5xx."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SidecarFactory
from tests.fuzz.harness import LoopBridge, assert_answer, dumps, fuzz, in_thread, json_values, post
from tests.proxy.test_api_slots_property import messages_body, responses_body

bodies = {
    "/v1/responses": st.one_of(responses_body().map(dumps), json_values.map(dumps),
                               st.binary(max_size=500)),
    "/v1/messages": st.one_of(messages_body().map(dumps), json_values.map(dumps),
                              st.binary(max_size=500)),
}


def assert_anthropic_answer(status: int, body: bytes, content_type: str) -> None:
    """A 2xx, or a 4xx with exactly Anthropic's error schema (plus our code and request id)."""
    assert 200 <= status < 500 and not 300 <= status < 400, (status, body[:300])
    assert b"Traceback" not in body, body[:300]
    if status >= 400:
        assert content_type == "application/json", (status, content_type)
        answer = json.loads(body)
        assert set(answer) == {"type", "error", "request_id"} and answer["type"] == "error", answer
        assert set(answer["error"]) <= {"type", "message", "code"}, answer
        assert all(isinstance(v, str) for v in answer["error"].values()), answer
        assert answer["request_id"].startswith("req_"), answer


async def test_any_body_gets_2xx_or_the_apis_4xx(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """Generated Responses and Messages bodies, JSON values and bytes: no 5xx, no body outside
    the route's error schema."""
    server = await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"))
    bridge = LoopBridge(asyncio.get_running_loop())
    base = str(server.make_url("")).rstrip("/")
    seen: list[int] = []
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}

    @fuzz(150)
    @given(path=st.sampled_from(sorted(bodies)), data=st.data())
    def prop(path: str, data: st.DataObject) -> None:
        body = data.draw(bodies[path])
        status, answer, content_type = bridge.run(post(session, base + path, body, headers))
        seen.append(status)
        check = assert_anthropic_answer if path == "/v1/messages" else assert_answer
        check(status, answer, content_type)

    await in_thread(prop)
    assert len(seen) >= 100 and any(s >= 400 for s in seen) and any(s < 300 for s in seen), \
        (len(seen), sorted(set(seen)))
