"""argon2id hashing of key secrets, run in a thread pool with a cap on concurrent verifications.

argon2 costs ~0.2 s and 64 MiB per verification (RFC 9106 second recommendation), so it never
runs on the event loop, at most `max_concurrent` run at once per process, and the caller
caches the result (verification happens once per key per cache lifetime).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class PrioritySlots:
    """A semaphore whose waiters are served lowest priority number first (FIFO within one), so
    a suspect presenter's backlog cannot hold back everyone else's first verification."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int = 0) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():  # skip waiters that were cancelled
                granted.set_result(None)
                return
        self._free += 1


class SecretHasher:
    """Hash and verify secrets with argon2id; counts verifications (tests and metrics read it)."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int, max_concurrent: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                      parallelism=parallelism, hash_len=32, salt_len=16)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent,
                                        thread_name_prefix="argon2")
        self._slots = PrioritySlots(max_concurrent)
        self.max_concurrent = max_concurrent
        self.verifications = 0
        self.running = 0
        self.peak_running = 0

    def hash_sync(self, secret: str) -> str:
        return self._hasher.hash(secret)

    async def hash(self, secret: str) -> str:
        await self._slots.acquire()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.hash_sync, secret)
        finally:
            self._slots.release()

    async def verify(self, stored_hash: str, secret: str,
                     still_wanted: Callable[[], bool] = lambda: True, priority: int = 0) -> bool:
        """True when `secret` matches; never raises for a mismatch or a malformed hash.

        `still_wanted` is asked once a slot is free: a caller whose failure budget ran out
        while it queued gives up without burning a verification. Lower `priority` numbers are
        served first."""
        await self._slots.acquire(priority)
        try:
            if not still_wanted():
                return False
            self.verifications += 1
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._verify_sync, stored_hash, secret)
            finally:
                self.running -= 1
        finally:
            self._slots.release()

    def _verify_sync(self, stored_hash: str, secret: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the stored parameters are below the configured ones (raise them on verify)."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
