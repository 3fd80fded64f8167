"""What a guard is: a pure object with a name and a stage that turns a view into a `Verdict`.

Guards never know about HTTP, metrics, logs or shadow mode: `pipeline.py` turns their verdicts
into behaviour. A third-party guard is a class published under the entry-point group
`sidecar.guards`; it is built with the options its policy gives (`Guard(**options)`) and must
satisfy `Guard` below. One that sets `slow = True` runs off the event loop with a time budget.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sidecar.model import TextSlot, Verdict

ALLOW = "allow"
MODIFY = "modify"
FLAG = "flag"
BLOCK = "block"
ACTIONS = (ALLOW, MODIFY, FLAG, BLOCK)


class Stage(enum.Enum):
    """When a guard runs: on the request, on a whole reply, or on a reply as it streams."""

    INPUT = "input"
    OUTPUT = "output"
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class RequestView:
    """What an input guard reads: the route and every text slot the model will read.

    `groups[i]` is the message index slot `i` belongs to (-1 for fields outside `messages`),
    so size limits per message need no path parsing.
    """

    route: str
    slots: tuple[TextSlot, ...]
    groups: tuple[int, ...] = ()
    message_count: int = 0

    def texts(self) -> tuple[TextSlot, ...]:
        return self.slots

    def with_text(self, index: int, text: str) -> RequestView:
        slot = self.slots[index]
        slots = (*self.slots[:index], TextSlot(slot.path, slot.role, slot.trust, text),
                 *self.slots[index + 1:])
        return RequestView(self.route, slots, self.groups, self.message_count)


@dataclass(frozen=True, slots=True)
class ResponseView:
    """What an output guard reads: the reply's text slots and the request's (for context)."""

    route: str
    slots: tuple[TextSlot, ...]
    request: RequestView | None = None

    def texts(self) -> tuple[TextSlot, ...]:
        return self.slots


@runtime_checkable
class Guard(Protocol):
    """A pure check over a request or a reply."""

    name: str
    stage: Stage

    def check(self, subject: Any) -> Verdict:
        """Judge a `RequestView` (INPUT) or a `ResponseView` (OUTPUT)."""
        ...


def allow() -> Verdict:
    return _ALLOW


_ALLOW = Verdict(ALLOW)


def block(reason: str, score: float = 1.0, categories: Sequence[str] = (),
          slot: int | None = None) -> Verdict:
    return Verdict(BLOCK, reason=reason, score=score, categories=tuple(categories), slot=slot)


def flag(reason: str, score: float = 1.0, categories: Sequence[str] = (),
         slot: int | None = None) -> Verdict:
    return Verdict(FLAG, reason=reason, score=score, categories=tuple(categories), slot=slot)


def modify(reason: str, edits: Sequence[tuple[int, str]]) -> Verdict:
    return Verdict(MODIFY, reason=reason, edits=tuple(edits))
