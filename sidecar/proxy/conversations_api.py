"""Conversations on the proxy listener: the list/read/delete API and the request-path glue.

The tenant is always the authenticated key's (`Principal.tenant`); nothing in the request
(headers such as X-Tenant-Id, body fields) can name another. Another tenant's conversation
answers 404 exactly as a missing one does.

Request path (called from `proxy/routes.py`):
  step 3/4  `conversation_request(headers, route)`: `X-Conversation-Id` (1-128 of
            [A-Za-z0-9._-]) and `X-Conversation-Replay: true`, or a 400;
  after 5   `begin_turn(app, principal, conv, parsed)`: refuses a turn the tenant's quotas
            would not keep (403), remembers the request's new user and tool messages and,
            with replay (scope `conversations`: replaying is reading), puts the stored history
            (never a flagged message, newest kept within `replay_max_tokens`) after the
            request's system messages;
  step 9    `ReplyCollector`: the assistant's reply exactly as the client received it;
  step 10   `store_turn_after_reply(request, response, turn, reply)`: finishes sending the
            reply, then `finish_turn` scores every message with the injection detector and
            stores the turn (retried once, then counted and logged; never raises) in a
            background task a hang-up cannot cancel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from sidecar.appstate import BACKGROUND, CONTEXT, METRICS, POLICIES, SETTINGS, STORE
from sidecar.conversations import (
    STORED_ROLES,
    ConversationQuotaExceeded,
    ConversationService,
    ConversationSummary,
    Keyring,
    NewMessage,
    StoredMessage,
    decode_cursor,
    load_keyring,
    select_for_replay,
    valid_conversation_id,
)
from sidecar.errors import InsufficientScope, InvalidRequest, NotFound, StoreUnavailable
from sidecar.guards.injection import InjectionResult, content_text
from sidecar.guards.validate import estimate_tokens
from sidecar.log import log_fields
from sidecar.metrics import Metrics
from sidecar.model import Principal
from sidecar.proxy.openai import SSEDecoder, event_data
from sidecar.proxy.requests import ParsedRequest
from sidecar.settings import ConversationSettings
from sidecar.store.redis import Store, StoreError

log = logging.getLogger("sidecar.conversations")

ID_HEADER = "X-Conversation-Id"
REPLAY_HEADER = "X-Conversation-Replay"
STORE_OP = "conversations"  # the `op` label of sidecar_store_errors_total
PER_MESSAGE_TOKENS = 4
# Resource -> route name, for `routes.ROUTE_OF_RESOURCE` (the route name is the scope).
CONVERSATION_RESOURCES = {"/v1/conversations": "conversations",
                          "/v1/conversations/{conversation_id}": "conversations"}
REPLAY_SCOPE = "conversations"  # the scope that reads stored conversations, replay included
_SYSTEM_ROLES = frozenset({"system", "developer"})


class Conversations:
    """What the request path and the handlers share: the service, the injection scorer (the
    default policy's guard, with its verdict cache), the metrics."""

    def __init__(self, service: ConversationService, score: Callable[[str], InjectionResult],
                 metrics: Metrics) -> None:
        self.service = service
        self.score = score
        self.metrics = metrics
        self.settings = service.settings

    def verdict(self, message: Mapping[str, Any]) -> NewMessage:
        """The message with the input guard's injection verdict on all of its text."""
        text = message_text(message)
        result = self.score(text) if text else None
        return NewMessage.of(message, result.score if result else 0.0,
                             result.detected if result else False)


CONVERSATIONS = web.AppKey("conversations", Conversations)


def build_conversations(settings: ConversationSettings, store: Store, metrics: Metrics,
                        keyring: Keyring | None,
                        score: Callable[[str], InjectionResult]) -> Conversations:
    return Conversations(ConversationService(store, settings, keyring), score, metrics)


def setup_conversations(app: web.Application) -> None:
    """Call in create_app after the cleanup context that opens the store (app[STORE]).

    Reads the master key now, so a bad one stops start-up with a ConfigError naming its
    variable; the service is built once the store is open."""
    settings = app[SETTINGS]
    keyring = load_keyring(settings.conversations)

    async def context(app: web.Application) -> AsyncIterator[None]:
        app[CONVERSATIONS] = build_conversations(settings.conversations, app[STORE], app[METRICS],
                                                 keyring, app[POLICIES].injection_guard().score)
        yield

    app.cleanup_ctx.append(context)


# -- request-path glue ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConversationRequest:
    conversation_id: str
    replay: bool


@dataclass(slots=True)
class Turn:
    """One request's part of a conversation, carried from `begin_turn` to `finish_turn`."""

    conversation_id: str
    tenant: str
    key_id: str
    new_messages: list[dict[str, Any]]
    replayed: int = 0  # history messages put into the request (> 0: the body changed)


def conversation_request(headers: Mapping[str, str], route: str) -> ConversationRequest | None:
    """The conversation headers of a request, or None without `X-Conversation-Id`; 400 when
    they are malformed or used on a route other than chat."""
    conversation_id = headers.get(ID_HEADER)
    replay_value = headers.get(REPLAY_HEADER)
    if conversation_id is None:
        if replay_value is not None:
            raise InvalidRequest(f"{REPLAY_HEADER} needs {ID_HEADER}.")
        return None
    if not valid_conversation_id(conversation_id):
        raise InvalidRequest(f"{ID_HEADER} must be 1-128 characters of A-Z a-z 0-9 . _ -")
    if route not in ("chat", "messages"):
        raise InvalidRequest(f"{ID_HEADER} is supported on /v1/chat/completions and /v1/messages "
                             "only.")
    replay = (replay_value or "false").strip().lower()
    if replay not in ("true", "false"):
        raise InvalidRequest(f"{REPLAY_HEADER} must be true or false.")
    return ConversationRequest(conversation_id, replay == "true")


def new_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    """The request's new turn: its user and tool messages after the last assistant message."""
    tail: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "assistant":
            tail = []
        elif message.get("role") in STORED_ROLES:
            tail.append(dict(message))
    return tail


def message_text(message: Mapping[str, Any]) -> str:
    """All the text of a chat message: content (string or text parts) and tool-call arguments."""
    text = content_text(message.get("content"))
    parts: list[str] = [text] if text else []
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            parts.append(function["arguments"])
    return "\n".join(parts)


def message_tokens(message: Mapping[str, Any]) -> int:
    """Estimated tokens of a replayed message (its text plus the per-message framing)."""
    return PER_MESSAGE_TOKENS + estimate_tokens(message_text(message))


async def begin_turn(app: web.Application, principal: Principal, conv: ConversationRequest,
                     parsed: ParsedRequest) -> Turn:
    """After the input guards: remember the new messages (as guarded, so as forwarded) and, with
    replay, insert the stored history after the request's leading system messages.
    `turn.replayed > 0` means `parsed.body` changed and must be re-encoded. StoreUnavailable
    (503) when the history cannot be read."""
    messages: list[Any] = parsed.body["messages"]
    turn = Turn(conv.conversation_id, principal.tenant, principal.key_id, new_messages(messages))
    if conv.replay and REPLAY_SCOPE not in principal.scopes:  # replaying is reading, as GET is
        raise InsufficientScope(f"Replaying a conversation needs the '{REPLAY_SCOPE}' scope.")
    conversations = app[CONVERSATIONS]
    await check_quota(conversations, turn)
    if not conv.replay:
        return turn
    try:
        history = await conversations.service.history(principal.tenant, conv.conversation_id)
    except StoreError:
        conversations.metrics.store_errors.labels(STORE_OP).inc()
        raise StoreUnavailable() from None
    answered = [m["tool_call_id"] for m in turn.new_messages
                if m.get("role") == "tool" and isinstance(m.get("tool_call_id"), str)]
    replay = select_for_replay(history, conversations.settings.replay_max_tokens, message_tokens,
                               answered)
    if replay:
        at = 0
        while at < len(messages) and isinstance(messages[at], dict) \
                and messages[at].get("role") in _SYSTEM_ROLES:
            at += 1
        parsed.body["messages"] = [*messages[:at], *replay, *messages[at:]]
        turn.replayed = len(replay)
    return turn


async def check_quota(conversations: Conversations, turn: Turn) -> None:
    """Refuse (403 conversation_quota_exceeded, counted) a turn the tenant's quotas would not
    store, before the provider is paid for a reply that could not be kept. A store failure
    here lets the request through: the write after the reply meets it and is counted."""
    try:
        await conversations.service.check_quota(turn.tenant, turn.conversation_id)
    except ConversationQuotaExceeded as exc:
        conversations.metrics.conversation_quota.labels(exc.cap, "refused").inc()
        raise
    except StoreError:
        pass


@dataclass(slots=True)
class _Call:
    id: str = ""
    type: str = "function"
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ReplyCollector:
    """The assistant's reply (choice 0) as the client received it: from the final JSON body, or
    from the SSE bytes the sidecar wrote to the client (after the output guards)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, _Call] = {}
        self._decoder = SSEDecoder()

    def feed(self, sent: bytes) -> None:
        """Bytes exactly as written to the client's stream (any chunking)."""
        for event in self._decoder.feed(sent):
            data = event_data(event)
            if data is None or data == b"[DONE]":
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                self._take(obj, "delta")

    def from_json(self, body: Any) -> None:
        """A whole chat completion as sent to the client."""
        if isinstance(body, dict):
            self._take(body, "message")

    def _take(self, obj: dict[str, Any], key: str) -> None:
        for choice in obj.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            part = choice.get(key)
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("content"), str):
                self._text.append(part["content"])
            for n, call in enumerate(part.get("tool_calls") or ()):
                if not isinstance(call, dict):
                    continue
                index = call.get("index", n)
                slot = self._calls.setdefault(index if isinstance(index, int) else n, _Call())
                if isinstance(call.get("id"), str):
                    slot.id = call["id"]
                if isinstance(call.get("type"), str):
                    slot.type = call["type"]
                function = call.get("function")
                if isinstance(function, dict):
                    if isinstance(function.get("name"), str):
                        slot.name += function["name"]
                    if isinstance(function.get("arguments"), str):
                        slot.arguments.append(function["arguments"])

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return [{"id": c.id, "type": c.type,
                 "function": {"name": c.name, "arguments": "".join(c.arguments)}}
                for _, c in sorted(self._calls.items())]

    def message(self) -> dict[str, Any] | None:
        """The assistant message to store, or None when the reply was empty."""
        calls = self.tool_calls
        if not self._text and not calls:
            return None
        message: dict[str, Any] = {"role": "assistant", "content": self.text if self._text else None}
        if calls:
            message["tool_calls"] = calls
        return message


async def store_turn_after_reply(request: web.Request, response: web.StreamResponse, turn: Turn,
                                 reply: ReplyCollector) -> None:
    """Send the rest of the reply, then store the turn. Once the reply is delivered the turn
    happened: a client that hangs up now (curl, one-shot scripts) must neither lose it nor be
    counted as a 499. The write runs as a background task that shutdown waits for; the handler
    waits for it too (shielded), so the client's next turn can replay this one."""
    if not response.prepared:
        await response.prepare(request)
        await response.write_eof()
    ctx = request[CONTEXT]
    ctx.status = response.status  # delivered: what the access log and metrics report
    app = request.app
    task = asyncio.ensure_future(finish_turn(app, turn, ctx.request_id, reply))
    app[BACKGROUND].track(task)
    await asyncio.shield(task)


async def finish_turn(app: web.Application, turn: Turn, request_id: str,
                      reply: ReplyCollector | str | None) -> bool:
    """After a successful response: store the turn (the request's new messages and the reply,
    each with its injection verdict). A failed write is retried once (the script ignores a
    turn it already stored), then counted and logged without content. Never raises; True
    when stored."""
    conversations = app[CONVERSATIONS]
    try:
        messages = list(turn.new_messages)
        if isinstance(reply, ReplyCollector):
            assistant = reply.message()
        else:
            assistant = {"role": "assistant", "content": reply} if reply else None
        if assistant is not None:
            messages.append(assistant)
        if not messages:
            return True
        records = [conversations.verdict(m) for m in messages]
        for attempt in (1, 2):
            try:
                await conversations.service.append(turn.tenant, turn.key_id, turn.conversation_id,
                                                   records, request_id)
                return True
            except StoreError as exc:
                error = type(exc.__cause__ or exc).__name__
                if attempt == 2:
                    raise
                log_fields(log, logging.WARNING, "conversation write failed; retrying",
                           request_id=request_id, error=error)
    except ConversationQuotaExceeded as exc:
        # Another request took the room after this one's check: the reply was delivered, the
        # turn cannot be kept. Counted and logged (without content), never silent.
        conversations.metrics.conversation_quota.labels(exc.cap, "dropped").inc()
        log_fields(log, logging.WARNING, "conversation turn dropped: tenant quota reached",
                   request_id=request_id, key_id=turn.key_id, cap=exc.cap)
    except Exception as exc:
        conversations.metrics.store_errors.labels(STORE_OP).inc()
        log_fields(log, logging.ERROR, "conversation turn not stored", request_id=request_id,
                   key_id=turn.key_id, error=type(exc.__cause__ or exc).__name__)
    return False


# -- HTTP API ---------------------------------------------------------------------------------

def _seconds(ms: int) -> int:
    return ms // 1000


def _summary_json(s: ConversationSummary) -> dict[str, Any]:
    return {"id": s.id, "object": "conversation", "created": _seconds(s.created_ms),
            "updated": _seconds(s.updated_ms), "message_count": s.message_count,
            "bytes": s.bytes, "key_id": s.key_id}


def _message_json(m: StoredMessage) -> dict[str, Any]:
    return {**m.as_openai(), "created": _seconds(m.created_ms),
            "injection": {"score": m.score, "detected": m.detected}}


def _json(request: web.Request, data: Any, status: int = 200) -> web.Response:
    headers = {"X-Request-Id": request[CONTEXT].request_id, "Cache-Control": "no-store"}
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json",
                        headers=headers)


async def _principal(request: web.Request) -> Principal:
    from sidecar.proxy.routes import authorize  # routes imports this module to mount it

    return await authorize(request, request[CONTEXT])


def _store_failed(request: web.Request) -> StoreUnavailable:
    request.app[METRICS].store_errors.labels(STORE_OP).inc()
    return StoreUnavailable()


async def handle_list(request: web.Request) -> web.Response:
    """GET /v1/conversations?limit=1..100&cursor=... : the caller's tenant's, newest first."""
    principal = await _principal(request)
    raw_limit = request.query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise InvalidRequest("Query parameter 'limit' must be a whole number from 1 to 100.")
    cursor = request.query.get("cursor")
    if cursor is not None and decode_cursor(cursor) is None:
        raise InvalidRequest("Query parameter 'cursor' is not valid.")
    try:
        page = await request.app[CONVERSATIONS].service.list(principal.tenant, int(raw_limit), cursor)
    except StoreError:
        raise _store_failed(request) from None
    return _json(request, {"object": "list", "data": [_summary_json(s) for s in page.items],
                           "has_more": page.cursor is not None, "next_cursor": page.cursor})


async def handle_get(request: web.Request) -> web.Response:
    """GET /v1/conversations/{id}: meta and messages, each with its injection verdict."""
    principal = await _principal(request)
    conversation_id = request.match_info["conversation_id"]
    try:
        conversation = await request.app[CONVERSATIONS].service.get(principal.tenant, conversation_id)
    except StoreError:
        raise _store_failed(request) from None
    if conversation is None:
        raise NotFound("No such conversation.")
    return _json(request, {**_summary_json(conversation.summary),
                           "messages": [_message_json(m) for m in conversation.messages]})


async def handle_delete(request: web.Request) -> web.Response:
    """DELETE /v1/conversations/{id}."""
    principal = await _principal(request)
    conversation_id = request.match_info["conversation_id"]
    try:
        deleted = await request.app[CONVERSATIONS].service.delete(principal.tenant, conversation_id)
    except StoreError:
        raise _store_failed(request) from None
    if not deleted:
        raise NotFound("No such conversation.")
    return _json(request, {"id": conversation_id, "object": "conversation.deleted", "deleted": True})


def add_conversation_routes(app: web.Application) -> None:
    """Mount the API; map CONVERSATION_RESOURCES to the route name "conversations" (the scope)."""
    app.router.add_get("/v1/conversations", handle_list, allow_head=False)
    app.router.add_get("/v1/conversations/{conversation_id}", handle_get, allow_head=False)
    app.router.add_delete("/v1/conversations/{conversation_id}", handle_delete)
