"""The Responses and Messages APIs get the same protection as chat: an injection in any text
slot of a request is refused in that API's error shape before the provider sees it, a secret
in any reply slot never reaches the client, whole or streamed, and budgets settle from each
API's own usage fields."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import RedisProcess, SidecarFactory, create_key
from tests.proxy.test_limits_http import settled
from tests.proxy.test_text_slots import (
    INJECTION,
    data_url,
    fake_secret,
    leaked,
    received,
    script,
    split,
    token_entries,
)

RESPONSES, MESSAGES = "/v1/responses", "/v1/messages"
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}
SAFE = "Summarize our chat."


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory, mock_upstream: TestServer) -> TestServer:
    return await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"))


def resp(*items: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "input": list(items) or SAFE, **extra}


def msgs(*messages: Any, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "max_tokens": 64,
            "messages": list(messages) or [{"role": "user", "content": SAFE}], **extra}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def fn_tool(description: str = "Looks a word up.", param: str = "The word.") -> dict[str, Any]:
    return {"type": "function", "name": "lookup", "description": description,
            "parameters": {"type": "object", "properties": {"w": {"type": "string",
                                                                   "description": param}}}}


def claude_tool(description: str = "Looks a word up.", param: str = "The word.") -> dict[str, Any]:
    return {"name": "lookup", "description": description,
            "input_schema": {"type": "object", "properties": {"w": {"type": "string",
                                                                     "description": param}}}}


def tool_use(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                              "name": "lookup", "input": arguments}]}


def request_slots(text: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, path, body): `text` sits in a different slot each time."""
    call = {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"}
    return [
        ("responses input string", RESPONSES, {"model": "mock-gpt", "input": text}),
        ("responses message content", RESPONSES, resp(user(text))),
        ("responses input_text part", RESPONSES, resp(user([{"type": "input_text", "text": text}]))),
        ("responses assistant history", RESPONSES,
         resp({"role": "assistant", "content": [{"type": "output_text", "text": text}]}, user(SAFE))),
        ("responses refusal history", RESPONSES,
         resp({"role": "assistant", "content": [{"type": "refusal", "refusal": text}]}, user(SAFE))),
        ("responses function_call arguments", RESPONSES,
         resp(user(SAFE), {**call, "arguments": orjson.dumps({"q": text}).decode()})),
        ("responses function_call_output", RESPONSES,
         resp(user(SAFE), call, {"type": "function_call_output", "call_id": "call_1", "output": text})),
        ("responses custom tool output", RESPONSES,
         resp(user(SAFE), {"type": "custom_tool_call_output", "call_id": "c", "output": text})),
        ("responses reasoning summary", RESPONSES,
         resp({"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text",
                                                              "text": text}]}, user(SAFE))),
        ("responses text file", RESPONSES,
         resp(user([{"type": "input_file", "filename": "notes.txt",
                     "file_data": data_url("Notes.\n" + text)}]))),
        ("responses file name", RESPONSES,
         resp(user([{"type": "input_file", "filename": text, "file_id": "file-1"}]))),
        ("responses tool description", RESPONSES, resp(tools=[fn_tool(description=text)])),
        ("responses tool parameter", RESPONSES, resp(tools=[fn_tool(param=text)])),
        ("responses text format schema", RESPONSES,
         resp(text={"format": {"type": "json_schema", "name": "a", "description": text,
                               "schema": {"type": "object"}}})),
        ("responses prompt variables", RESPONSES,
         resp(prompt={"id": "pmpt_1", "variables": {"topic": text}})),
        ("responses unknown item", RESPONSES, resp(user(SAFE), {"type": "future_item", "note": text})),
        ("responses unknown field", RESPONSES, resp(context_notes=text)),
        ("messages content string", MESSAGES, msgs(user(text))),
        ("messages text block", MESSAGES, msgs(user([{"type": "text", "text": text}]))),
        ("messages assistant history", MESSAGES,
         msgs(user(SAFE), {"role": "assistant", "content": text}, user(SAFE))),
        ("messages tool_use input", MESSAGES, msgs(user(SAFE), tool_use({"q": {"deep": text}}),
                                                   user(SAFE))),
        ("messages tool_result string", MESSAGES,
         msgs(user(SAFE), tool_use({}), user([{"type": "tool_result", "tool_use_id": "toolu_1",
                                               "content": text}]))),
        ("messages tool_result blocks", MESSAGES,
         msgs(user(SAFE), tool_use({}), user([{"type": "tool_result", "tool_use_id": "toolu_1",
                                               "content": [{"type": "text", "text": text}]}]))),
        ("messages text document", MESSAGES,
         msgs(user([{"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                                    "data": "Report.\n" + text}}, SAFE_BLOCK]))),
        ("messages document title", MESSAGES,
         msgs(user([{"type": "document", "title": text, "source": {
             "type": "url", "url": "https://example.com/a.pdf"}}, SAFE_BLOCK]))),
        ("messages document context", MESSAGES,
         msgs(user([{"type": "document", "context": text, "source": {
             "type": "text", "media_type": "text/plain", "data": "ok"}}, SAFE_BLOCK]))),
        ("messages document content blocks", MESSAGES,
         msgs(user([{"type": "document", "source": {"type": "content", "content": [
             {"type": "text", "text": text}]}}, SAFE_BLOCK]))),
        ("messages thinking history", MESSAGES,
         msgs(user(SAFE), {"role": "assistant", "content": [
             {"type": "thinking", "thinking": text, "signature": "sig"}]}, user(SAFE))),
        ("messages search result", MESSAGES,
         msgs(user([{"type": "search_result", "source": "https://example.com", "title": "t",
                     "content": [{"type": "text", "text": text}]}, SAFE_BLOCK]))),
        ("messages tool description", MESSAGES, msgs(tools=[claude_tool(description=text)])),
        ("messages tool schema description", MESSAGES, msgs(tools=[claude_tool(param=text)])),
        ("messages unknown block", MESSAGES, msgs(user([{"type": "future_block", "body": text},
                                                        SAFE_BLOCK]))),
        ("messages unknown message field", MESSAGES, msgs(user(SAFE) | {"notes": text})),
        ("messages unknown field", MESSAGES, msgs(context_notes=text)),
    ]


SAFE_BLOCK = {"type": "text", "text": SAFE}
REQUEST_SLOTS = request_slots(INJECTION)


def refusal_code(path: str, error: dict[str, Any]) -> str:
    """The code of a refusal in the route's API shape (Anthropic's on /v1/messages)."""
    if path == MESSAGES:
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        return str(error["error"]["code"])
    return str(error["error"]["code"])


@pytest.mark.parametrize(("name", "path", "body"), REQUEST_SLOTS, ids=[s[0] for s in REQUEST_SLOTS])
async def test_an_injection_in_any_slot_is_refused_in_the_apis_shape(
        name: str, path: str, body: dict[str, Any], sidecar: TestServer, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """400 prompt_injection_detected in the API's own error shape; nothing is forwarded."""
    async with session.post(sidecar.make_url(path), json=body, headers=ANTHROPIC_HEADERS) as response:
        error = await response.json()
        assert response.status == 400, error
    assert refusal_code(path, error) == "prompt_injection_detected"
    assert await received(session, mock_upstream) == []


async def test_the_benign_twins_pass_unchanged(sidecar: TestServer, mock_upstream: TestServer,
                                               session: aiohttp.ClientSession) -> None:
    """The same shapes with harmless text reach the provider exactly as sent (the control), but
    for the completion cap the sidecar sets on a Responses request that has none."""
    for name, path, body in request_slots("Please keep answers short."):
        async with session.post(sidecar.make_url(path), json=body,
                                headers=ANTHROPIC_HEADERS) as response:
            assert response.status == 200, (name, await response.text())
        forwarded = (await received(session, mock_upstream))[-1]["body"]
        if path == RESPONSES and "max_output_tokens" not in body:  # capped to the reservation
            assert forwarded.pop("max_output_tokens") == 1024, name
        assert forwarded == body, name


@pytest.mark.parametrize(("path", "body", "field"), [
    (RESPONSES, {"model": "m", "input": 5}, "input"),
    (RESPONSES, {"model": "m", "input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    (RESPONSES, {"model": "m", "input": "x", "instructions": ["x"]}, "instructions"),
    (MESSAGES, {"model": "m", "messages": [user("x")]}, "max_tokens"),
    (MESSAGES, {"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages[0].role"),
    (MESSAGES, {"model": "m", "max_tokens": 5, "system": 3, "messages": [user("x")]}, "system"),
])
async def test_shape_errors_are_400s_naming_the_field(
        path: str, body: dict[str, Any], field: str, sidecar: TestServer,
        session: aiohttp.ClientSession) -> None:
    """A wrong shape is a 400 that names the field, in the route's error shape."""
    async with session.post(sidecar.make_url(path), json=body, headers=ANTHROPIC_HEADERS) as response:
        error = await response.json()
        assert response.status == 400, error
    message = error["error"]["message"]
    assert f"'{field}'" in message, message


# -- replies -----------------------------------------------------------------------------------

def response_obj(*output: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": "completed", "model": "m",
            "output": list(output), "usage": {"input_tokens": 3, "output_tokens": 5,
                                              "total_tokens": 8}, **extra}


def message_item(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": list(parts)}


def claude_message(*blocks: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": list(blocks), "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 5}, **extra}


def whole_replies(secret: str) -> list[tuple[str, str, dict[str, Any]]]:
    text = f"Your key is {secret} today."
    args = orjson.dumps({"key": secret}).decode()
    return [
        ("responses output_text", RESPONSES, response_obj(message_item(
            {"type": "output_text", "text": text, "annotations": []}))),
        ("responses refusal", RESPONSES, response_obj(message_item(
            {"type": "refusal", "refusal": text}))),
        ("responses function_call arguments", RESPONSES, response_obj(
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f",
             "arguments": args})),
        ("responses reasoning summary", RESPONSES, response_obj(
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": text}]},
            message_item({"type": "output_text", "text": "ok"}))),
        ("responses annotation title", RESPONSES, response_obj(message_item(
            {"type": "output_text", "text": "see", "annotations": [
                {"type": "url_citation", "url": "https://example.com", "title": text}]}))),
        ("responses unknown field", RESPONSES, response_obj(trace=[text])),
        ("responses logprob tokens", RESPONSES, response_obj(message_item(
            {"type": "output_text", "text": "ok", "logprobs": token_entries(split(secret))}))),
        ("messages text block", MESSAGES, claude_message({"type": "text", "text": text})),
        ("messages tool_use input", MESSAGES, claude_message(
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"key": secret}})),
        ("messages thinking", MESSAGES, claude_message(
            {"type": "thinking", "thinking": text, "signature": "sig"},
            {"type": "text", "text": "ok"})),
        ("messages unknown field", MESSAGES, claude_message({"type": "text", "text": "ok"},
                                                            trace=text)),
    ]


WHOLE_NAMES = [r[0] for r in whole_replies("sk-proj-" + "x" * 48)]


def scripted(path: str, stream: bool = False) -> dict[str, Any]:
    body = resp() if path == RESPONSES else msgs()
    return {**body, "model": "mock-scripted", "stream": stream}


@pytest.mark.parametrize("index", range(len(WHOLE_NAMES)), ids=WHOLE_NAMES)
async def test_a_secret_in_any_whole_reply_slot_never_reaches_the_client(
        index: int, sidecar: TestServer, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """The reply arrives (200) with the secret redacted wherever the provider put it."""
    secret = fake_secret()
    name, path, reply = whole_replies(secret)[index]
    await script(session, mock_upstream, {"json": reply})
    async with session.post(sidecar.make_url(path), json=scripted(path),
                            headers=ANTHROPIC_HEADERS) as response:
        raw = await response.read()
        assert response.status == 200, raw
    assert not leaked(raw, secret), name
    assert b"[REDACTED:" in raw


def sse(kind: str, **fields: Any) -> str:
    return f"event: {kind}\ndata: " + orjson.dumps({"type": kind, **fields}).decode()


def responses_stream(secret: str, kind: str, done_field: str, **ids: Any) -> list[str]:
    """A Responses stream with the secret split across `kind` deltas, then the done event and
    response.completed repeating the whole text, as the API sends them."""
    pieces = split(secret)
    text = "".join(pieces)
    return [sse("response.created", response={"id": "resp_1", "status": "in_progress"}),
            *(sse(f"{kind}.delta", delta=p, **ids) for p in pieces),
            sse(f"{kind}.done", **{done_field: text}, **ids),
            sse("response.completed", response=response_obj(message_item(
                {"type": "output_text", "text": text})))]


def messages_stream(secret: str, delta_type: str, field: str, block: dict[str, Any]) -> list[str]:
    pieces = split(secret) if field != "partial_json" else \
        ['{"key": "', *split(secret)[1:-1], '"}']
    return [sse("message_start", message=claude_message() | {"content": []}),
            sse("content_block_start", index=0, content_block=block),
            sse("ping"),
            *(sse("content_block_delta", index=0, delta={"type": delta_type, field: p})
              for p in pieces),
            sse("content_block_stop", index=0),
            sse("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 9}),
            sse("message_stop")]


def streams(secret: str) -> list[tuple[str, str, list[str]]]:
    item = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    return [
        ("responses output text", RESPONSES,
         responses_stream(secret, "response.output_text", "text", **item)),
        ("responses refusal", RESPONSES,
         responses_stream(secret, "response.refusal", "refusal", **item)),
        ("responses function call arguments", RESPONSES,
         responses_stream(secret, "response.function_call_arguments", "arguments",
                          item_id="fc_1", output_index=0)),
        ("responses reasoning summary", RESPONSES,
         responses_stream(secret, "response.reasoning_summary_text", "text", item_id="rs_1",
                          output_index=0, summary_index=0)),
        ("responses logprob tokens", RESPONSES,
         [*(sse("response.output_text.delta", delta=p, logprobs=token_entries([p]), **item)
            for p in split(secret)),
          sse("response.output_text.done", text="".join(split(secret)),
              logprobs=token_entries(split(secret)), **item),
          sse("response.completed", response=response_obj())]),
        ("responses unknown event", RESPONSES,
         [sse("response.future_thing", note=f"Your key is {secret}"),
          sse("response.completed", response=response_obj())]),
        ("messages text", MESSAGES,
         messages_stream(secret, "text_delta", "text", {"type": "text", "text": ""})),
        ("messages tool input json", MESSAGES,
         messages_stream(secret, "input_json_delta", "partial_json",
                         {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}})),
        ("messages thinking", MESSAGES,
         messages_stream(secret, "thinking_delta", "thinking", {"type": "thinking", "thinking": ""})),
    ]


STREAM_NAMES = [s[0] for s in streams("sk-proj-" + "x" * 48)]


def events_of(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) of every SSE event the client received."""
    out = []
    for block in raw.decode().split("\n\n"):
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: {"):
                data = orjson.loads(line[6:])
        if data is not None:
            out.append((name, data))
    return out


@pytest.mark.parametrize("index", range(len(STREAM_NAMES)), ids=STREAM_NAMES)
async def test_a_secret_in_any_streamed_slot_never_reaches_the_client(
        index: int, sidecar: TestServer, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """However the provider splits it, the secret is redacted in the stream the client reads;
    every event keeps its `event:` line, and the deltas join into the text the done event
    repeats."""
    secret = fake_secret()
    name, path, events = streams(secret)[index]
    await script(session, mock_upstream, {"events": events})
    async with session.post(sidecar.make_url(path), json=scripted(path, stream=True),
                            headers=ANTHROPIC_HEADERS) as response:
        raw = await response.read()
        assert response.status == 200, raw
    assert not leaked(raw, secret), (name, raw)
    assert b"[REDACTED:" in raw, name
    got = events_of(raw)
    assert all(event == data["type"] for event, data in got), raw
    deltas = [d for _, d in got if d["type"].endswith(".delta") and isinstance(d.get("delta"), str)]
    done = [d for _, d in got if d["type"].endswith("_text.done") or d["type"].endswith(
        "refusal.done") or d["type"].endswith("arguments.done")]
    if done:
        key = next(k for k in ("text", "refusal", "arguments") if k in done[0])
        assert "".join(d["delta"] for d in deltas) == done[0][key]


async def test_a_stream_cut_by_the_output_policy_ends_in_the_apis_error_event(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """With secrets set to block, a Messages stream ends in Anthropic's `error` event and a
    Responses stream in the Responses `error` event, neither carrying the secret, whether the
    secret was streamed in pieces or sat in a field scanned whole."""
    sidecar = await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"),
                                 output_actions='{"secret": "block"}')
    secret = fake_secret()
    named = {name: events for name, _, events in streams(secret)}
    for path, events in ((MESSAGES, named["messages text"]),
                         (RESPONSES, named["responses output text"]),
                         (RESPONSES, named["responses unknown event"])):
        await script(session, mock_upstream, {"events": events})
        async with session.post(sidecar.make_url(path), json=scripted(path, stream=True),
                                headers=ANTHROPIC_HEADERS) as response:
            raw = await response.read()
        assert not leaked(raw, secret)
        name, last = events_of(raw)[-1]
        assert name == "error" and last["type"] == "error", raw
        code = last["error"]["code"] if path == MESSAGES else last["code"]
        assert code == "output_blocked"


async def test_a_stored_response_is_guarded_on_the_way_out(
        sidecar: TestServer, session: aiohttp.ClientSession) -> None:
    """GET /v1/responses/{id} redacts a secret the provider stored in the reply."""
    secret = fake_secret()
    async with session.post(sidecar.make_url(RESPONSES), json={
            "model": "mock-echo", "input": f"Repeat {secret} please."}) as response:
        assert secret.encode() not in await response.read()
    async with session.get(sidecar.make_url(RESPONSES + "/resp_mock")) as response:
        raw = await response.read()
        assert response.status == 200, raw
    assert not leaked(raw, secret) and b"[REDACTED:" in raw


async def test_a_provider_error_on_messages_keeps_anthropics_shape_scrubbed(
        sidecar: TestServer, session: aiohttp.ClientSession) -> None:
    """Anthropic's 4xx reaches the client in Anthropic's shape, the key-like text scrubbed."""
    async with session.post(sidecar.make_url(MESSAGES), json=msgs() | {"model": "mock-error-400"},
                            headers=ANTHROPIC_HEADERS) as response:
        error = await response.json()
        assert response.status == 400
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "sk-ant-mock" not in error["error"]["message"]


# -- budgets -------------------------------------------------------------------------------------

async def test_budgets_settle_from_each_apis_usage_fields(
        make_sidecar: SidecarFactory, mock_upstream: TestServer, redis_url: str,
        redis_proc: RedisProcess) -> None:
    """Recorded tokens equal what each API reported: Responses' usage.total_tokens (whole, and
    response.completed when streamed); Messages' input (with cache reads and writes) plus
    output tokens (whole, and message_start + message_delta when streamed)."""
    sidecar = await make_sidecar(anthropic_url=str(mock_upstream.make_url("")).rstrip("/"))
    key = await create_key(redis_url, limits=[{"window_s": 3600, "tokens": 100_000}])
    cached = claude_message({"type": "text", "text": "ok"}) | {"usage": {
        "input_tokens": 10, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 6,
        "output_tokens": 7}}
    stream = [sse("message_start", message=claude_message() | {
                  "content": [], "usage": {"input_tokens": 11, "output_tokens": 1}}),
              sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
              sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "hi"}),
              sse("content_block_stop", index=0),
              sse("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 9}),
              sse("message_stop")]
    cases: list[tuple[str, dict[str, Any], dict[str, Any] | None, int | None]] = [
        (RESPONSES, {"model": "mock-gpt", "input": "count to three"}, None, None),
        (RESPONSES, {"model": "mock-gpt", "input": "count to three", "stream": True}, None, None),
        (MESSAGES, scripted(MESSAGES), {"json": cached}, 27),
        (MESSAGES, scripted(MESSAGES, stream=True), {"events": stream}, 20),
    ]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}",
                                              **ANTHROPIC_HEADERS}) as session:
        for path, body, reply, expected in cases:
            if reply is not None:
                await script(session, mock_upstream, reply)
            async with session.post(sidecar.make_url(path), json=body) as response:
                raw = await response.read()
                assert response.status == 200, raw
                request_id = response.headers["X-Request-Id"]
            if expected is None:  # the mock's own usage, as the client saw it
                got = events_of(raw)
                usage = got[-1][1]["response"]["usage"] if body.get("stream") else \
                    orjson.loads(raw)["usage"]
                expected = usage["total_tokens"]
            assert await settled(redis_proc, request_id, expected) == expected, (path, body)


async def test_stored_response_routes_are_guarded_too(
        sidecar: TestServer, mock_upstream: TestServer, session: aiohttp.ClientSession) -> None:
    """Input items, cancel and delete reach the provider (listing parameters only) and their
    answers are scanned like any reply."""
    secret = fake_secret()
    async with session.post(sidecar.make_url(RESPONSES), json={
            "model": "mock-echo", "input": f"Keep {secret} safe."}) as response:
        assert response.status == 200
    async with session.get(sidecar.make_url(RESPONSES + "/resp_mock/input_items"),
                           params={"limit": "5", "order": "asc", "api_key": "x"}) as response:
        raw = await response.read()
        assert response.status == 200, raw
    assert not leaked(raw, secret) and b"[REDACTED:" in raw
    async with session.post(sidecar.make_url(RESPONSES + "/resp_mock/cancel")) as response:
        assert (await response.json())["status"] == "cancelled"
    async with session.delete(sidecar.make_url(RESPONSES + "/resp_mock")) as response:
        assert (await response.json())["deleted"] is True
    got = (await received(session, mock_upstream))[-3:]
    assert [(r["method"], r["path"], r["query"]) for r in got] == [
        ("GET", "/v1/responses/resp_mock/input_items", "limit=5&order=asc"),
        ("POST", "/v1/responses/resp_mock/cancel", ""),
        ("DELETE", "/v1/responses/resp_mock", "")]


async def test_a_blocked_field_scanned_whole_ends_a_chat_stream_as_output_blocked(
        make_sidecar: SidecarFactory, mock_upstream: TestServer,
        session: aiohttp.ClientSession) -> None:
    """A chat chunk whose non-streamed field holds a blocked secret ends the stream with the
    output_blocked error event (not an internal error), without the secret."""
    sidecar = await make_sidecar(output_actions='{"secret": "block"}')
    secret = fake_secret()
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}],
             "trace": f"key {secret}"}
    await script(session, mock_upstream, {"events": ["data: " + orjson.dumps(chunk).decode(),
                                                     "data: [DONE]"]})
    async with session.post(sidecar.make_url("/v1/chat/completions"), json={
            "model": "mock-scripted", "stream": True,
            "messages": [{"role": "user", "content": SAFE}]}) as response:
        raw = await response.read()
    assert not leaked(raw, secret)
    errors = [d for _, d in events_of(raw) if "error" in d]
    assert errors and errors[-1]["error"]["code"] == "output_blocked", raw
