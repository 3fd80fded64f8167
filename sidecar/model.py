"""Frozen value types shared across modules (no behaviour, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the authenticated key and what it may do."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    limits: tuple[LimitRule, ...] = ()
    lineage: str = ""  # the first key id of a rotation chain: rotated keys share usage windows
    policy: str = ""  # the guard policy this key runs ("" = its tenant's, else the default)
    models: tuple[str, ...] = ()  # model names or glob patterns it may call (empty: every model)

    @property
    def limit_id(self) -> str:
        """Identity the key's usage windows hang off (survives rotation)."""
        return self.lineage or self.key_id


@dataclass(frozen=True, slots=True)
class LimitRule:
    """One sliding-window limit: `requests`, `tokens` and/or `cost_usd` per `window_s` seconds
    (cost: the provider's reported tokens priced by `usage.prices`).

    `mode = "shadow"` evaluates and counts the rule as if it refused, but lets the request pass.
    """

    window_s: int
    requests: int | None = None
    tokens: int | None = None
    mode: str = "enforce"  # "enforce" | "shadow"
    cost_usd: float | None = None


TRUSTED = "trusted"
"""Trust of the app's own instructions (system and developer messages by default): context for
judging the rest, not itself scanned for injection."""
UNTRUSTED = "untrusted"
"""Trust of what the end user (or the model, in history) wrote: scanned as instructions."""
DATA = "data"
"""Trust of text that arrives as data (tool and function results, file parts, documents): an
instruction addressed to the assistant inside it is the signal."""


@dataclass(frozen=True, slots=True)
class TextSlot:
    """One piece of text a model reads (request) or wrote (response).

    `path` names where it sits in the JSON body (`messages[2].content[0].text`), `role` who it
    comes from (`system`, `user`, `tool`, ... or the field's name for prompt-style routes) and
    `trust` one of TRUSTED, UNTRUSTED or DATA.
    """

    path: str
    role: str
    trust: str
    text: str


@dataclass(frozen=True, slots=True)
class Finding:
    """A span of text a guard matched: [start, end) in the scanned string, and its kind."""

    start: int
    end: int
    kind: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """A guard's decision over its input: allow, modify (edits to named slots), flag or block."""

    action: str  # "allow" | "modify" | "block" | "flag"
    reason: str = ""
    score: float = 0.0
    categories: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = field(default=())
    edits: tuple[tuple[int, str], ...] = ()  # (slot index, new text) when action is "modify"
    slot: int | None = None  # the slot that decided a flag or block, when one did
    detail: str = ""  # a public message for a block (names the limit; never echoes input)


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage as the provider reported it (or as estimated when it did not)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
