"""argon2id hashing of key secrets, run in a thread pool with a cap on concurrent verifications.

argon2 costs ~0.2 s and 64 MiB per verification (RFC 9106 second recommendation), so it never
runs on the event loop, at most `max_concurrent` run at once per process, and the caller
caches the result (verification happens once per key per cache lifetime).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


class SecretHasher:
    """Hash and verify secrets with argon2id; counts verifications (tests and metrics read it)."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int, max_concurrent: int) -> None:
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib,
                                      parallelism=parallelism, hash_len=32, salt_len=16)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent,
                                        thread_name_prefix="argon2")
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.verifications = 0
        self.running = 0
        self.peak_running = 0

    def hash_sync(self, secret: str) -> str:
        return self._hasher.hash(secret)

    async def hash(self, secret: str) -> str:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.hash_sync, secret)

    async def verify(self, stored_hash: str, secret: str,
                     still_wanted: Callable[[], bool] = lambda: True) -> bool:
        """True when `secret` matches; never raises for a mismatch or a malformed hash.

        `still_wanted` is asked once a slot is free: a caller whose failure budget ran out
        while it queued gives up without burning a verification."""
        async with self._slots:
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
