"""Authenticate a presented key with argon2 kept off the hot path.

The way of one key:
1. format and checksum (no I/O) — garbage never reaches Redis or argon2;
2. the verified cache (bounded LRU keyed by SHA-256 of the raw key, `cache_ttl_s`) — the
   hot path ends here for every request but the first per key per cache lifetime;
3. a key this process verified before (its SHA-256 digest is remembered with the argon2 hash it
   matched) is checked against the current record without argon2 and without any failure
   budget: a guesser can never lock out a key its owner has used here;
4. the negative cache and a failure budget per (key id, client address) — wrong secrets cannot
   burn CPU, and a guesser spends only its own address's budget, not the owner's;
5. on a miss: the key record from the store and one argon2 verification in the thread pool,
   shared by every concurrent request presenting the same key (single flight); at most
   `max_concurrent_verifications` run at once, and presenters whose (key id, address) has
   failures wait behind those without (the owner's first use goes ahead of a guesser's queue).
Revocations, rotations and changes are announced on a pub/sub channel; each sidecar drops
the cached entry at once, and the cache TTL bounds staleness when pub/sub is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from redis.exceptions import RedisError

from sidecar.auth.failures import FailureWindow
from sidecar.auth.hashing import SecretHasher
from sidecar.auth.keyformat import parse_key
from sidecar.auth.records import EVENTS_CHANNEL, KeyNotFound, KeyRecord, KeyRecords, record_key
from sidecar.errors import InvalidApiKey, MissingApiKey, StoreUnavailable
from sidecar.model import Principal
from sidecar.settings import AuthSettings
from sidecar.store.redis import Store, StoreError

log = logging.getLogger("sidecar.auth")


@dataclass(slots=True)
class _Cached:
    principal: Principal
    fresh_until: float  # monotonic
    expires_at: float | None  # wall clock (the key's own expiry)


class Authenticator:
    """Turns a presented raw key into a Principal, or raises a 401 (or 503 if the store is down)."""

    def __init__(self, store: Store, hasher: SecretHasher, settings: AuthSettings) -> None:
        self.store = store
        self.records = KeyRecords(store, hasher)
        self.hasher = hasher
        self.settings = settings
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._by_key_id: dict[str, set[bytes]] = {}
        self._negative: OrderedDict[bytes, float] = OrderedDict()
        self._failures = FailureWindow(settings.failed_per_minute, settings.cache_size)
        # digest of a raw key verified here -> the argon2 hash it matched (no TTL: the record is
        # fetched again whenever the verified cache entry has lapsed)
        self._known: OrderedDict[bytes, str] = OrderedDict()
        self._inflight: dict[bytes, asyncio.Future[Principal | None]] = {}
        # Key records by id (without any secret), so many presented secrets for one key id
        # cost one store lookup; fetched single-flight, dropped on key events.
        self._records: OrderedDict[str, tuple[KeyRecord, float]] = OrderedDict()
        self._record_fetches: dict[str, asyncio.Future[KeyRecord]] = {}
        self.pubsub_connected = False

    async def authenticate(self, raw: str | None, client: str | None = None) -> Principal:
        """`client` is the presenter's address (the TCP peer): failure budgets are per key id
        and address."""
        if not raw:
            raise MissingApiKey()
        digest = hashlib.sha256(raw.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if time.monotonic() < cached.fresh_until and (
                cached.expires_at is None or time.time() < cached.expires_at
            ):
                self._cache.move_to_end(digest)
                return cached.principal
            self._drop(digest)
        parsed = parse_key(raw)
        if parsed is None:
            raise InvalidApiKey()
        now = time.monotonic()
        subject = (parsed.key_id, client or "")
        if digest not in self._known:
            refused_until = self._negative.get(digest)
            if refused_until is not None and now < refused_until:
                raise InvalidApiKey()
            if self._failures.over(subject, now):
                raise InvalidApiKey()
        pending = self._inflight.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[digest] = pending
            try:
                principal = await self._verify(digest, subject, parsed.secret)
                pending.set_result(principal)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved here so a lone caller's failure is not "unretrieved"
                raise
            finally:
                del self._inflight[digest]
        else:
            principal = await asyncio.shield(pending)
        if principal is None:
            raise InvalidApiKey()
        return principal

    async def _record(self, key_id: str) -> KeyRecord:
        cached = self._records.get(key_id)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        pending = self._record_fetches.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._record_fetches[key_id] = pending
        try:
            record = await self.records.get(key_id)
            pending.set_result(record)
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()
            raise
        finally:
            del self._record_fetches[key_id]
        self._records[key_id] = (record, time.monotonic() + self.settings.cache_ttl_s)
        while len(self._records) > self.settings.cache_size:
            self._records.popitem(last=False)
        return record

    async def _verify(self, digest: bytes, subject: tuple[str, str],
                      secret: str) -> Principal | None:
        key_id = subject[0]
        try:
            record = await self._record(key_id)
        except KeyNotFound:
            self._refuse(digest, subject)
            return None
        except StoreError:
            raise StoreUnavailable() from None
        wall = time.time()
        if record.state(wall) != "active" or not record.secret_hash:
            self._refuse(digest, subject)
            return None
        known_hash = self._known.get(digest)
        if known_hash is None or not hmac.compare_digest(known_hash, record.secret_hash):
            # Unknown here (or its hash changed): argon2, queued behind presenters without
            # failures when this one has some, given up if its budget runs out meanwhile.
            def within_budget() -> bool:
                return known_hash is not None or \
                    not self._failures.over(subject, time.monotonic())

            suspect = known_hash is None and self._failures.count(subject, time.monotonic()) > 0
            if not await self.hasher.verify(record.secret_hash, secret, within_budget,
                                            priority=1 if suspect else 0):
                self._refuse(digest, subject)
                return None
        principal = Principal(key_id=key_id, tenant=record.tenant, scopes=record.scopes,
                              limits=record.limits, lineage=record.lineage, policy=record.policy,
                              models=record.models)
        self._remember(digest, principal, record)
        with contextlib.suppress(StoreError):
            await self.records.touch(record)
        if self.hasher.needs_rehash(record.secret_hash):
            await self._rehash(record, secret)
        return principal

    async def _rehash(self, record: KeyRecord, secret: str) -> None:
        """Raise the stored argon2 parameters to the configured ones (possible only on verify)."""
        new_hash = await self.hasher.hash(secret)
        with contextlib.suppress(StoreError):
            await self.store.call("hset", record_key(record.tenant, record.key_id), "hash", new_hash)

    def _remember(self, digest: bytes, principal: Principal, record: KeyRecord) -> None:
        self._cache[digest] = _Cached(principal, time.monotonic() + self.settings.cache_ttl_s,
                                      record.expires_at)
        self._by_key_id.setdefault(principal.key_id, set()).add(digest)
        self._known[digest] = record.secret_hash
        self._known.move_to_end(digest)
        while len(self._known) > self.settings.cache_size:
            self._known.popitem(last=False)
        while len(self._cache) > self.settings.cache_size:
            old_digest, old = self._cache.popitem(last=False)
            self._forget_index(old.principal.key_id, old_digest)

    def _refuse(self, digest: bytes, subject: tuple[str, str]) -> None:
        now = time.monotonic()
        self._negative[digest] = now + self.settings.negative_ttl_s
        while len(self._negative) > self.settings.cache_size:
            self._negative.popitem(last=False)
        self._known.pop(digest, None)
        self._failures.add(subject, now)

    def _drop(self, digest: bytes) -> None:
        cached = self._cache.pop(digest, None)
        if cached is not None:
            self._forget_index(cached.principal.key_id, digest)

    def _forget_index(self, key_id: str, digest: bytes) -> None:
        digests = self._by_key_id.get(key_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_key_id[key_id]

    def invalidate(self, key_id: str) -> None:
        """Forget everything cached about `key_id` (a revocation, rotation or change)."""
        for digest in list(self._by_key_id.get(key_id, ())):
            self._drop(digest)
        self._records.pop(key_id, None)
        self._failures.forget(key_id)

    def clear(self) -> None:
        self._cache.clear()
        self._by_key_id.clear()
        self._records.clear()

    async def listen(self, stop: asyncio.Event) -> None:
        """Apply key events from pub/sub until `stop`; reconnect on failure, clearing the cache on
        every (re)subscription so events missed while disconnected cannot leave a stale entry."""
        client = self.store.pubsub_client()
        while not stop.is_set():
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                self.clear()
                self.pubsub_connected = True
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=0.5)
                    if message and message.get("type") == "message":
                        data = message["data"]
                        self.invalidate(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError, TimeoutError):
                self.pubsub_connected = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            finally:
                self.pubsub_connected = False
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()
        if client is not self.store.client:
            await client.aclose()
