"""A mock provider for `make run`, the tests and the benchmarks: OpenAI's chat, completions,
embeddings, models and Responses routes, Azure OpenAI's paths for them, and Anthropic's
Messages API, each whole and streamed with usage.

The model name steers it, so a test can ask for a failure through any client:
- `mock-echo`: the reply repeats the last user message (for output-guard tests);
- `mock-error-500`, `mock-error-400`, `mock-429`, `mock-bad-json`, `mock-redirect`: failures;
- `mock-hang`: never answers; `mock-slow-stream`: streams, holding its last event until
  `POST /_mock/release` (so a test can see incremental delivery without sleeping);
- `mock-truncated-stream`: ends the stream without `[DONE]`; `mock-no-usage`: no usage;
- `mock-scripted`: answers with the next reply queued by `POST /_mock/script`, which takes
  `{"status": 200, "json": {...}}` for a whole body or `{"events": ["data: {...}", ": note"]}`
  for an SSE stream (each string one event), so a test can send any shape a provider might.
- `mock-long`: writes until its limit, as a model left uncapped does: `max_completion_tokens`
  (or `max_tokens`) words, or LONG_REPLY_LIMIT words when the request sets no cap.
Any other model answers normally. `GET /_mock/requests` lists what it received (headers and
body, and the query string) so tests can check what reached the provider.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

MODELS = ("mock-gpt", "mock-echo", "mock-embed")
DEFAULT_REPLY = "Hello! This is the mock provider answering through the sidecar."
LONG_REPLY_LIMIT = 1200  # `mock-long`'s words when the request sets no cap


class _Recorder:
    """What the mock received, newest last, bounded; and how many streams are open now."""

    def __init__(self, keep: int) -> None:
        self.requests: deque[dict[str, Any]] = deque(maxlen=keep)
        self.open_streams = 0


_RECEIVED = web.AppKey("received", _Recorder)


class _Gate:
    """Holds slow streams before their last event until a test releases them."""

    def __init__(self) -> None:
        self.event = asyncio.Event()


_RELEASE = web.AppKey("release", _Gate)
_SCRIPTS = web.AppKey("scripts", deque)
_LATENCY = web.AppKey("latency_s", float)
_STORED = web.AppKey("stored", dict)


def count_tokens(text: str) -> int:
    """The mock's tokenizer: one token per whitespace-separated word (at least 1)."""
    return max(1, len(text.split()))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(_text_of(m.get("content")) for m in body["messages"] if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def _reply_text(body: dict[str, Any]) -> str:
    model = body.get("model", "")
    if model == "mock-long":
        cap = body.get("max_completion_tokens", body.get("max_tokens"))
        words = cap if isinstance(cap, int) and not isinstance(cap, bool) else LONG_REPLY_LIMIT
        return " ".join(["token"] * max(words, 1))
    if model == "mock-echo":
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"]
        if users:
            return _text_of(users[-1].get("content"))
        return _prompt_text(body)
    return DEFAULT_REPLY


def _usage(prompt: str, completion: str) -> dict[str, int]:
    p, c = count_tokens(prompt), count_tokens(completion)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status)


async def _record(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    body: dict[str, Any] = orjson.loads(raw) if raw else {}
    request.app[_RECEIVED].requests.append({"path": request.path, "query": request.query_string,
                                            "headers": dict(request.headers), "body": body})
    latency = request.app[_LATENCY]
    if latency:
        await asyncio.sleep(latency)
    return body


async def _failure(request: web.Request, body: dict[str, Any]) -> web.StreamResponse | None:
    model = body.get("model", "")
    if model == "mock-scripted":
        return await _scripted(request)
    if model == "mock-error-500":
        return web.Response(status=500, text="Traceback (most recent call last): internal boom")
    if model == "mock-error-400":
        return _error(400, "Invalid value for 'temperature' with key sk-mock" + "abcdef123456",
                      "invalid_request_error", "invalid_value")
    if model == "mock-429":
        response = _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
        response.headers["Retry-After"] = "7"
        return response
    if model == "mock-bad-json":
        return web.Response(status=200, body=b"{not json", content_type="application/json")
    if model == "mock-redirect":
        return web.Response(status=302, headers={"Location": "http://127.0.0.1:1/"})
    if model == "mock-hang":
        await asyncio.Event().wait()
    if model.startswith("gpt-") or model == "does-not-exist":
        return _error(404, f"The model '{model[:64]}' does not exist", "invalid_request_error",
                      "model_not_found")
    return None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    failure = await _failure(request, body)
    if failure is not None:
        return failure
    reply = _reply_text(body)
    usage = _usage(_prompt_text(body), reply)
    created = int(time.time())
    if body.get("stream"):
        return await _stream_chat(request, body, reply, usage, created)
    return web.json_response({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": created,
        "model": body.get("model", "mock-gpt"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": usage,
    }, dumps=lambda o: orjson.dumps(o).decode())


def _chunk(model: str, created: int, delta: dict[str, Any], finish: str | None) -> bytes:
    obj = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
           "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}]}
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def split_reply(reply: str) -> list[str]:
    """The reply as the mock streams it: words with their leading space."""
    words = reply.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


async def _stream_chat(request: web.Request, body: dict[str, Any], reply: str,
                       usage: dict[str, int], created: int) -> web.StreamResponse:
    recorder = request.app[_RECEIVED]
    recorder.open_streams += 1
    try:
        return await _write_chat_stream(request, body, reply, usage, created)
    finally:
        recorder.open_streams -= 1


async def _write_chat_stream(request: web.Request, body: dict[str, Any], reply: str,
                             usage: dict[str, int], created: int) -> web.StreamResponse:
    model = body.get("model", "mock-gpt")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(_chunk(model, created, {"role": "assistant", "content": ""}, None))
    pieces = split_reply(reply)
    for i, piece in enumerate(pieces):
        if model == "mock-slow-stream" and i == len(pieces) - 1:
            await request.app[_RELEASE].event.wait()
        await response.write(_chunk(model, created, {"content": piece}, None))
        if model == "mock-truncated-stream" and i >= 1:
            await response.write_eof()
            return response
    await response.write(_chunk(model, created, {}, "stop"))
    options = body.get("stream_options") or {}
    if options.get("include_usage") and model != "mock-no-usage":
        obj = {"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
               "model": model, "choices": [], "usage": usage}
        await response.write(b"data: " + orjson.dumps(obj) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    failure = await _failure(request, body)
    if failure is not None:
        return failure
    reply = DEFAULT_REPLY
    usage = _usage(_prompt_text(body), reply)
    created = int(time.time())
    model = body.get("model", "mock-gpt")
    if body.get("stream"):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in split_reply(reply):
            obj = {"id": "cmpl-mock", "object": "text_completion", "created": created,
                   "model": model, "choices": [{"index": 0, "text": piece, "logprobs": None,
                                                "finish_reason": None}]}
            await response.write(b"data: " + orjson.dumps(obj) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    return web.json_response({
        "id": "cmpl-mock", "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": reply, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage,
    })


def _vector(text: str, dims: int = 8) -> list[float]:
    seed = sum(map(ord, text)) or 1
    return [((seed * (i + 7)) % 97) / 97.0 for i in range(dims)]


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    failure = await _failure(request, body)
    if failure is not None:
        return failure
    inputs = body.get("input", "")
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    data = []
    for i, item in enumerate(items):
        vector = _vector(str(item))
        encoded: Any = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(count_tokens(str(item)) for item in items)
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _model(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "mock"}


async def list_models(request: web.Request) -> web.Response:
    request.app[_RECEIVED].requests.append({"path": request.path, "query": request.query_string,
                                            "headers": dict(request.headers), "body": {}})
    return web.json_response({"object": "list", "data": [_model(m) for m in MODELS]})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model"]
    if model_id not in MODELS:
        return _error(404, f"The model '{model_id[:64]}' does not exist",
                      "invalid_request_error", "model_not_found")
    return web.json_response(_model(model_id))


# -- OpenAI Responses API --------------------------------------------------------------------------

def _responses_input_text(body: dict[str, Any]) -> tuple[str, str]:
    """(all input text, the last user text) of a Responses request."""
    items = body.get("input", "")
    if isinstance(items, str):
        return items, items
    texts, last = [], ""
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        text = _text_of(item.get("content")) or str(item.get("output", ""))
        texts.append(text)
        if item.get("role") == "user":
            last = text
    return " ".join(texts), last


def _response_object(body: dict[str, Any], reply: str, usage: dict[str, int],
                     status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_mock", "object": "response", "created_at": int(time.time()), "status": status,
        "model": body.get("model", "mock-gpt"), "previous_response_id":
            body.get("previous_response_id"),
        "output": [{"type": "message", "id": "msg_mock", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": reply, "annotations": []}]}],
        "usage": {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
                  "total_tokens": usage["total_tokens"],
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}},
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
    }


async def responses(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    failure = await _failure(request, body)
    if failure is not None:
        return failure
    prompt, last_user = _responses_input_text(body)
    prompt = " ".join(filter(None, (body.get("instructions"), prompt)))
    reply = last_user if body.get("model") == "mock-echo" and last_user else DEFAULT_REPLY
    usage = _usage(prompt, reply)
    stored = _response_object(body, reply, usage)
    request.app[_STORED]["resp_mock"] = {**stored, "_input": prompt}
    if not body.get("stream"):
        return web.json_response(stored, dumps=lambda o: orjson.dumps(o).decode())
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    sequence = 0

    async def send(kind: str, **fields: Any) -> None:
        nonlocal sequence
        event = {"type": kind, **fields, "sequence_number": sequence}
        sequence += 1
        await response.write(f"event: {kind}\ndata: ".encode() + orjson.dumps(event) + b"\n\n")

    started = {**stored, "status": "in_progress", "output": [], "usage": None}
    await send("response.created", response=started)
    item = {"type": "message", "id": "msg_mock", "status": "in_progress", "role": "assistant",
            "content": []}
    await send("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    await send("response.content_part.added", item_id="msg_mock", output_index=0, content_index=0,
               part=part)
    for piece in split_reply(reply):
        await send("response.output_text.delta", item_id="msg_mock", output_index=0,
                   content_index=0, delta=piece, logprobs=[])
    await send("response.output_text.done", item_id="msg_mock", output_index=0, content_index=0,
               text=reply, logprobs=[])
    await send("response.content_part.done", item_id="msg_mock", output_index=0, content_index=0,
               part={**part, "text": reply})
    await send("response.output_item.done", output_index=0, item=stored["output"][0])
    await send("response.completed", response=stored)
    await response.write_eof()
    return response


async def stored_response(request: web.Request) -> web.Response:
    """GET or DELETE a stored response, cancel it, or list its input items."""
    request.app[_RECEIVED].requests.append({"path": request.path, "query": request.query_string,
                                            "method": request.method,
                                            "headers": dict(request.headers), "body": {}})
    response_id = request.match_info["response_id"]
    stored = request.app[_STORED].get(response_id)
    if stored is None:
        return _error(404, "No response with that id", "invalid_request_error", None)
    if request.method == "DELETE":
        del request.app[_STORED][response_id]
        return web.json_response({"id": response_id, "object": "response", "deleted": True})
    if request.path.endswith("/input_items"):
        items = [{"type": "message", "id": "msg_in", "role": "user",
                  "content": [{"type": "input_text", "text": stored["_input"]}]}]
        return web.json_response({"object": "list", "data": items, "has_more": False},
                                 dumps=lambda o: orjson.dumps(o).decode())
    if request.path.endswith("/cancel"):
        stored = {**stored, "status": "cancelled"}
    public = {k: v for k, v in stored.items() if not k.startswith("_")}
    return web.json_response(public, dumps=lambda o: orjson.dumps(o).decode())


# -- Anthropic Messages API ------------------------------------------------------------------------

def _anthropic_error(status: int, type_: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": type_, "message": message}},
                             status=status)


async def messages(request: web.Request) -> web.StreamResponse:
    body = await _record(request)
    if body.get("model") == "mock-error-400":
        return _anthropic_error(400, "invalid_request_error",
                                "max_tokens: too large, key sk-ant-mock" + "abcdef123456")
    failure = await _failure(request, body)
    if failure is not None:
        return failure
    if "anthropic-version" not in request.headers:
        return _anthropic_error(400, "invalid_request_error", "anthropic-version header is required")
    chat = [m for m in body.get("messages", []) if isinstance(m, dict)]
    system = body.get("system")
    prompt = " ".join([_text_of(system)] + [_text_of(m.get("content")) for m in chat])
    users = [m for m in chat if m.get("role") == "user"]
    last = _text_of(users[-1].get("content")) if users else ""
    reply = last if body.get("model") == "mock-echo" and last else DEFAULT_REPLY
    usage = _usage(prompt, reply)
    message = {"id": "msg_mock", "type": "message", "role": "assistant",
               "model": body.get("model", "mock-claude"),
               "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
               "stop_sequence": None, "usage": {"input_tokens": usage["prompt_tokens"],
                                                "output_tokens": usage["completion_tokens"]}}
    if not body.get("stream"):
        return web.json_response(message, dumps=lambda o: orjson.dumps(o).decode())
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    async def send(kind: str, **fields: Any) -> None:
        await response.write(f"event: {kind}\ndata: ".encode()
                             + orjson.dumps({"type": kind, **fields}) + b"\n\n")

    await send("message_start", message={**message, "content": [], "stop_reason": None,
                                         "usage": {"input_tokens": usage["prompt_tokens"],
                                                   "output_tokens": 1}})
    await send("content_block_start", index=0, content_block={"type": "text", "text": ""})
    await send("ping")
    for piece in split_reply(reply):
        await send("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})
    await send("content_block_stop", index=0)
    await send("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
               usage={"output_tokens": usage["completion_tokens"]})
    await send("message_stop")
    await response.write_eof()
    return response


async def _scripted(request: web.Request) -> web.StreamResponse:
    scripts = request.app[_SCRIPTS]
    if not scripts:
        return _error(400, "No scripted reply is queued", "invalid_request_error", "no_script")
    script = scripts.popleft()
    if "events" in script:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in script["events"]:
            await response.write(event.encode() + b"\n\n")
        await response.write_eof()
        return response
    return web.json_response(script.get("json", {}), status=int(script.get("status", 200)),
                             dumps=lambda o: orjson.dumps(o).decode())


async def script(request: web.Request) -> web.Response:
    """Queue the reply the next `mock-scripted` request gets."""
    request.app[_SCRIPTS].append(await request.json())
    return web.json_response({"queued": len(request.app[_SCRIPTS])})


async def received(request: web.Request) -> web.Response:
    recorder = request.app[_RECEIVED]
    return web.json_response({"requests": list(recorder.requests), "open_streams": recorder.open_streams})


async def release(request: web.Request) -> web.Response:
    gate = request.app[_RELEASE]
    gate.event.set()
    gate.event = asyncio.Event()
    return web.json_response({"released": True})


def create_mock_app(latency_ms: float = 0.0, keep_requests: int = 200) -> web.Application:
    """The mock provider as an aiohttp app (tests mount it on a test server)."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_RECEIVED] = _Recorder(keep_requests)
    app[_RELEASE] = _Gate()
    app[_LATENCY] = latency_ms / 1000.0
    app[_SCRIPTS] = deque()
    app[_STORED] = {}
    # OpenAI's paths, then Azure OpenAI's: under a deployment, and the v1-style ones.
    for prefix in ("/v1", "/openai/deployments/{deployment}", "/openai/v1", "/openai"):
        if prefix != "/openai":
            app.router.add_post(prefix + "/chat/completions", chat_completions)
            app.router.add_post(prefix + "/completions", completions)
            app.router.add_post(prefix + "/embeddings", embeddings)
        if not prefix.startswith("/openai/deployments"):
            app.router.add_post(prefix + "/responses", responses)
            for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", "/cancel"),
                                   ("GET", "/input_items")):
                app.router.add_route(method, prefix + "/responses/{response_id}" + suffix,
                                     stored_response)
            app.router.add_get(prefix + "/models", list_models)
            app.router.add_get(prefix + "/models/{model}", get_model)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/_mock/requests", received)
    app.router.add_post("/_mock/release", release)
    app.router.add_post("/_mock/script", script)
    return app
