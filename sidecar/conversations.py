"""Tenant-namespaced conversation storage: store, list, read, delete, history for replay.

Layout (DESIGN.md section 4): one hash per conversation, `conv:{t:<tenant>}:<id>`, with its
meta fields and one field per message, one sorted set per tenant, `convidx:{t:<tenant>}`
(id -> updated ms), so listing never SCANs, and one hash per tenant, `convsize:{t:<tenant>}`
(id -> bytes, '#total'), for the tenant's quotas (`max_per_tenant`, `max_bytes_per_tenant`).
All carry the tenant's hash tag (one Cluster slot per tenant, so every operation is one
script on one node) and a TTL refreshed by every write. Tenants and ids are restricted to
[A-Za-z0-9._-], so no (tenant, id) pair can build another pair's key. The tenant always
comes from the caller's authenticated `Principal`.

Each stored message carries the input guard's verdict (score, detected); `select_for_replay`
never puts a flagged message back into a request. With a master key configured, the text of
every message (content, name, tool calls) is sealed with AES-256-GCM under a per-tenant key
derived with HKDF; the AAD binds tenant, conversation id, role and verdict, so a record
moved to another tenant or conversation, or whose verdict was edited, fails to open.

This module knows no HTTP and no guards: verdicts and token estimates are passed in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sidecar.errors import ConfigError, SidecarError
from sidecar.log import log_fields
from sidecar.settings import ConversationSettings
from sidecar.store.redis import Store

log = logging.getLogger("sidecar.conversations")

CONVERSATION_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
STORED_ROLES = frozenset({"user", "tool", "function"})  # what a request contributes to a turn
_PAYLOAD_FIELDS = ("content", "name", "tool_calls", "tool_call_id", "function_call")
_HKDF_SALT = b"ai-security-sidecar/conversations/v1"
_NONCE_BYTES = 12
_KEY_ID_HEX = 16  # first 8 bytes of SHA-256(master key), hex


class ConversationUnreadable(SidecarError):
    """A stored message cannot be opened: encrypted under a master key that is not configured,
    or tampered with. Never answered with garbage; details stay in the server log."""

    status, type, code = 500, "server_error", "conversation_unreadable"
    message = "The stored conversation cannot be read with the configured encryption key."


class ConversationQuotaExceeded(SidecarError):
    """The tenant keeps as many conversations, or as many bytes of them, as it may."""

    status, type, code = 403, "insufficient_quota", "conversation_quota_exceeded"

    def __init__(self, cap: str, used: int, limit: int) -> None:
        self.cap = cap  # "conversations" or "bytes"
        what = "conversations" if cap == "conversations" else "bytes of stored conversations"
        super().__init__(f"This tenant keeps {used} {what}; the limit is {limit}. Delete "
                         "conversations (DELETE /v1/conversations/{id}) or send the request "
                         "without X-Conversation-Id.")


_QUOTA_CAPS = {1: "conversations", 2: "bytes"}


# -- keys -------------------------------------------------------------------------------------

def valid_conversation_id(value: str) -> bool:
    """1-128 characters of A-Z a-z 0-9 . _ - (no separators, no hash-tag braces)."""
    return CONVERSATION_ID_RE.fullmatch(value) is not None


def _check(tenant: str, conversation_id: str | None = None) -> None:
    if TENANT_RE.fullmatch(tenant) is None:
        raise ValueError("tenant outside [A-Za-z0-9._-]{1,64}")
    if conversation_id is not None and not valid_conversation_id(conversation_id):
        raise ValueError("conversation id outside [A-Za-z0-9._-]{1,128}")


def conversation_key(tenant: str, conversation_id: str) -> str:
    """`conv:{t:<tenant>}:<id>`; both parts validated, so the mapping is injective."""
    _check(tenant, conversation_id)
    return f"conv:{{t:{tenant}}}:{conversation_id}"


def index_key(tenant: str) -> str:
    """`convidx:{t:<tenant>}`: the tenant's conversations by last update."""
    _check(tenant)
    return f"convidx:{{t:{tenant}}}"


def sizes_key(tenant: str) -> str:
    """`convsize:{t:<tenant>}`: bytes per conversation and their total (the byte quota)."""
    _check(tenant)
    return f"convsize:{{t:{tenant}}}"


# -- encryption -------------------------------------------------------------------------------

def master_key_id(master: bytes) -> str:
    """The id stored with each sealed message: first 8 bytes of SHA-256 of the master key, hex."""
    return hashlib.sha256(master).hexdigest()[:_KEY_ID_HEX]


class Keyring:
    """Master keys (the first seals, all open) and the per-tenant AES-GCM keys derived from them."""

    def __init__(self, masters: Sequence[bytes], cache_size: int = 4096) -> None:
        if not masters or any(len(m) != 32 for m in masters):
            raise ValueError("master keys must be 32 bytes each")
        self._masters = {master_key_id(m): m for m in masters}
        self.current_id = master_key_id(masters[0])
        self._cache: OrderedDict[tuple[str, str], AESGCM] = OrderedDict()
        self._cache_size = cache_size

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._masters)

    def _aead(self, key_id: str, tenant: str) -> AESGCM:
        slot = (key_id, tenant)
        aead = self._cache.get(slot)
        if aead is not None:
            self._cache.move_to_end(slot)
            return aead
        master = self._masters[key_id]
        derived = HKDF(algorithm=SHA256(), length=32, salt=_HKDF_SALT,
                       info=b"conversation-key\x00tenant:" + tenant.encode()).derive(master)
        aead = self._cache[slot] = AESGCM(derived)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return aead

    def seal(self, tenant: str, aad: bytes, plaintext: bytes) -> tuple[str, str]:
        """(key id, base64 of nonce + ciphertext + tag) under the tenant's current key."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead(self.current_id, tenant).encrypt(nonce, plaintext, aad)
        return self.current_id, base64.b64encode(nonce + sealed).decode()

    def open(self, key_id: str, tenant: str, aad: bytes, token: str) -> bytes:
        """The plaintext, or ConversationUnreadable (unknown key id, wrong key, tampered)."""
        if key_id not in self._masters:
            raise ConversationUnreadable()
        try:
            raw = base64.b64decode(token, validate=True)
            return self._aead(key_id, tenant).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except (InvalidTag, binascii.Error, ValueError):
            raise ConversationUnreadable() from None


def load_keyring(settings: ConversationSettings,
                 env: Mapping[str, str] | None = None) -> Keyring | None:
    """The keyring from the variable `settings.master_key_env` names: base64 of 32 bytes, or
    several separated by commas (the first seals new messages; the others still open old ones,
    for rotation). None when the variable is unset or empty (messages stored in plain text).
    Raises ConfigError naming the variable, never showing its value."""
    env = os.environ if env is None else env
    name = settings.master_key_env
    raw = env.get(name, "").strip() if name else ""
    if not raw:
        return None
    masters: list[bytes] = []
    for n, part in enumerate(raw.split(","), 1):
        try:
            key = base64.b64decode(part.strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError(f"{name}: entry {n} is not base64 of 32 bytes "
                              "(make one with: openssl rand -base64 32)")
        masters.append(key)
    return Keyring(masters)


def _aad(tenant: str, conversation_id: str, role: str, score: float, detected: bool) -> bytes:
    return orjson.dumps(["sidecar-conversation-v1", tenant, conversation_id, role, score, detected])


# -- values -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store and the input guard's verdict on it."""

    role: str
    payload: Mapping[str, Any]  # content, and name / tool_calls / tool_call_id when present
    score: float = 0.0
    detected: bool = False

    @classmethod
    def of(cls, message: Mapping[str, Any], score: float = 0.0, detected: bool = False) -> NewMessage:
        """From an OpenAI chat message dict (only the fields a replay needs are kept)."""
        payload = {k: message[k] for k in _PAYLOAD_FIELDS if message.get(k) is not None}
        return cls(str(message.get("role", "")), payload, float(score), bool(detected))


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message as stored: its position, time, role, fields and verdict."""

    seq: int
    created_ms: int
    role: str
    payload: Mapping[str, Any]
    score: float
    detected: bool

    def as_openai(self) -> dict[str, Any]:
        """The chat message to put into a request."""
        return {"role": self.role, **self.payload}


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation's meta fields."""

    id: str
    created_ms: int
    updated_ms: int
    message_count: int
    bytes: int
    key_id: str


@dataclass(frozen=True, slots=True)
class Conversation:
    summary: ConversationSummary
    messages: tuple[StoredMessage, ...]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing, newest first; `cursor` fetches the next page (None at the end)."""

    items: tuple[ConversationSummary, ...]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class AppendResult:
    stored: bool  # False when this turn id was stored before (a retry)
    message_count: int
    bytes: int
    trimmed: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def encode_cursor(updated_ms: int, conversation_id: str) -> str:
    return base64.urlsafe_b64encode(f"{updated_ms}:{conversation_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str] | None:
    """(updated ms, id) from a cursor, or None when it is not one of ours."""
    if not 0 < len(cursor) <= 256:
        return None
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    ms, _, conversation_id = text.partition(":")
    if not ms.isdigit() or len(ms) > 16 or not valid_conversation_id(conversation_id):
        return None
    return int(ms), conversation_id


# -- the service ------------------------------------------------------------------------------

class ConversationService:
    """Conversation storage for every tenant; each call names the tenant it acts for."""

    def __init__(self, store: Store, settings: ConversationSettings,
                 keyring: Keyring | None = None) -> None:
        self.store = store
        self.settings = settings
        self.keyring = keyring
        self._ttl_ms = settings.ttl_s * 1000

    # records ----------------------------------------------------------------------------------
    def encode(self, tenant: str, conversation_id: str, message: NewMessage) -> bytes:
        """The stored form of one message: role and verdict in clear, fields sealed if a key is set."""
        record: dict[str, Any] = {"r": message.role, "s": message.score, "d": message.detected}
        if self.keyring is None:
            record["p"] = message.payload
        else:
            aad = _aad(tenant, conversation_id, message.role, message.score, message.detected)
            record["k"], record["e"] = self.keyring.seal(tenant, aad, orjson.dumps(message.payload))
        return orjson.dumps(record)

    def decode(self, tenant: str, conversation_id: str, seq: int, value: bytes) -> StoredMessage:
        stamp, sep, body = value.partition(b"|")
        try:
            record = orjson.loads(body)
            role, score, detected = str(record["r"]), float(record["s"]), bool(record["d"])
            if "e" in record:
                if self.keyring is None:
                    raise ConversationUnreadable()
                aad = _aad(tenant, conversation_id, role, score, detected)
                payload = orjson.loads(self.keyring.open(str(record["k"]), tenant, aad, record["e"]))
            else:
                payload = record["p"]
            if not sep or not isinstance(payload, dict):
                raise ValueError("bad record")
            return StoredMessage(seq, int(stamp), role, payload, score, detected)
        except ConversationUnreadable:
            log_fields(log, logging.ERROR, "stored conversation message cannot be opened",
                       tenant=tenant, seq=seq, key_ids=sorted(self.keyring.key_ids)
                       if self.keyring else [])
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log_fields(log, logging.ERROR, "stored conversation message is malformed",
                       tenant=tenant, seq=seq)
            raise ConversationUnreadable() from None

    # operations -------------------------------------------------------------------------------
    async def append(self, tenant: str, key_id: str, conversation_id: str,
                     messages: Sequence[NewMessage], turn_id: str) -> AppendResult:
        """Store one turn (oldest message first); trims oldest first to the caps. A repeated
        turn id is a no-op, so the caller may retry. Raises StoreError, or
        ConversationQuotaExceeded (nothing written) when the tenant is at a quota."""
        if not turn_id or any(c.isspace() for c in turn_id) or len(turn_id) > 128:
            raise ValueError("turn id must be 1-128 characters without spaces")
        s = self.settings
        records = [self.encode(tenant, conversation_id, m) for m in messages]
        reply = await self.store.run(
            "conv_append",
            [conversation_key(tenant, conversation_id), index_key(tenant), sizes_key(tenant)],
            [conversation_id, key_id, turn_id, self._ttl_ms, s.max_messages, s.max_bytes,
             s.max_per_tenant, s.max_bytes_per_tenant, *records])
        stored, count, size, trimmed = (int(x) for x in reply)
        if stored == 2:
            raise ConversationQuotaExceeded(_QUOTA_CAPS[count], size, trimmed)
        return AppendResult(bool(stored), count, size, trimmed)

    async def check_quota(self, tenant: str, conversation_id: str) -> None:
        """ConversationQuotaExceeded when a turn of this conversation would be refused now (so
        a request can be refused before the provider is paid). Raises StoreError."""
        s = self.settings
        reply = await self.store.run(
            "conv_quota",
            [conversation_key(tenant, conversation_id), index_key(tenant), sizes_key(tenant)],
            [conversation_id, self._ttl_ms, s.max_per_tenant, s.max_bytes_per_tenant])
        cap = int(reply[0])
        if cap:
            raise ConversationQuotaExceeded(_QUOTA_CAPS[cap], int(reply[1]), int(reply[2]))

    async def get(self, tenant: str, conversation_id: str) -> Conversation | None:
        """The whole conversation, or None when this tenant has no conversation of that id."""
        if not valid_conversation_id(conversation_id):
            return None
        flat = await self.store.run("conv_read", [conversation_key(tenant, conversation_id)], [])
        if not flat:
            return None
        fields = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        if "created" not in fields:
            return None
        messages = sorted(
            (self.decode(tenant, conversation_id, int(name[2:]), value)
             for name, value in fields.items() if name.startswith("m:")),
            key=lambda m: m.seq)
        summary = ConversationSummary(
            conversation_id, int(fields["created"]), int(fields.get("updated", fields["created"])),
            int(fields.get("count", len(messages))), int(fields.get("bytes", 0)),
            _text(fields.get("key_id", b"")))
        return Conversation(summary, tuple(messages))

    async def history(self, tenant: str, conversation_id: str) -> tuple[StoredMessage, ...]:
        """Every stored message, oldest first (empty for an unknown conversation)."""
        conversation = await self.get(tenant, conversation_id)
        return conversation.messages if conversation else ()

    async def list(self, tenant: str, limit: int = 20, cursor: str | None = None) -> Page:
        """One page of this tenant's conversations, most recently updated first."""
        limit = max(1, min(limit, 100))
        after = decode_cursor(cursor) if cursor else None
        reply = await self.store.run(
            "conv_list", [index_key(tenant), sizes_key(tenant)],
            [self._ttl_ms, limit, str(after[0]) if after else "", after[1] if after else ""])
        more = bool(int(reply[0]))
        items = tuple(
            ConversationSummary(_text(reply[i]), int(reply[i + 1]), int(reply[i + 2]),
                                int(reply[i + 3]), int(reply[i + 4]), _text(reply[i + 5]))
            for i in range(1, len(reply), 6))
        next_cursor = encode_cursor(items[-1].updated_ms, items[-1].id) if more and items else None
        return Page(items, next_cursor)

    async def delete(self, tenant: str, conversation_id: str) -> bool:
        """True when this tenant had that conversation (now gone)."""
        if not valid_conversation_id(conversation_id):
            return False
        existed = await self.store.run(
            "conv_delete",
            [conversation_key(tenant, conversation_id), index_key(tenant), sizes_key(tenant)],
            [conversation_id])
        return bool(int(existed))


# -- replay -----------------------------------------------------------------------------------

def _tool_call_ids(message: Mapping[str, Any]) -> list[str]:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return []
    return [c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)]


def select_for_replay(history: Iterable[StoredMessage], max_tokens: int,
                      estimate: Callable[[Mapping[str, Any]], int],
                      answered: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The history to put before a request: never a flagged message; the newest messages whose
    estimated tokens fit `max_tokens`; and never a broken tool exchange (a tool result without
    its call, or a call whose results were left out, unless the request itself answers it:
    `answered` holds the tool_call ids the request's own tool messages carry)."""
    kept = [m.as_openai() for m in history if not m.detected]
    answered_ids = set(answered)
    changed = True
    while changed:  # each pass only removes messages, so this ends
        changed = False
        declared: set[str] = set()
        results = answered_ids | {m["tool_call_id"] for m in kept
                                  if m["role"] == "tool" and isinstance(m.get("tool_call_id"), str)}
        out: list[dict[str, Any]] = []
        for m in kept:
            ids = _tool_call_ids(m) if m["role"] == "assistant" else []
            if ids and not all(i in results for i in ids):
                changed = True
                continue
            if m["role"] == "tool" and m.get("tool_call_id") not in declared:
                changed = True
                continue
            declared.update(ids)
            out.append(m)
        kept = out
    budget = max_tokens
    start = len(kept)
    while start > 0:
        cost = estimate(kept[start - 1])
        if cost > budget:
            break
        budget -= cost
        start -= 1
    window = kept[start:]
    while window and window[0]["role"] == "tool":  # its call was cut off by the budget
        window.pop(0)
    return window
