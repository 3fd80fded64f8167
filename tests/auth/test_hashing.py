"""The verification slots: a suspect presenter's backlog never holds back a clean one."""

from __future__ import annotations

import asyncio

from sidecar.auth.hashing import PrioritySlots


async def test_a_clean_presenter_goes_ahead_of_a_suspect_backlog() -> None:
    """With the only slot busy, five suspect waiters (one of them cancelled) and then a clean
    one queue up; the clean one is served first, the rest in arrival order, the cancelled one
    never, and the slot count ends where it started."""
    slots = PrioritySlots(1)
    await slots.acquire()
    served: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await slots.acquire(priority)
        served.append(name)
        slots.release()

    tasks = [asyncio.create_task(waiter(f"suspect{i}", 1)) for i in range(5)]
    tasks.append(asyncio.create_task(waiter("owner", 0)))
    await asyncio.sleep(0)  # one loop pass: every task runs up to its acquire and queues
    tasks[2].cancel()
    slots.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert served == ["owner", "suspect0", "suspect1", "suspect3", "suspect4"]
    await asyncio.wait_for(slots.acquire(), 1)  # the slot is free again
