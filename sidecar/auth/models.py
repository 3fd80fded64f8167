"""Which models a key may call: an optional allow-list of names or glob patterns on the key.

An empty list allows every model (keys made before allow-lists existed keep working). Patterns
are shell-style (`claude-*`, `gpt-4o-mini`), matched case-sensitively against the model the
client names, before the sidecar spends anything on the request. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from typing import Any

MAX_MODELS = 64
_PATTERN = re.compile(r"[A-Za-z0-9._:/@*?\[\]-]{1,128}")


class ModelListError(ValueError):
    """An allow-list that is not valid; the message names the field."""


def parse_models(value: Any) -> tuple[str, ...]:
    """`["gpt-4o-mini", "claude-*"]` -> a validated tuple ([] or None: every model)."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_MODELS or \
            not all(isinstance(m, str) and _PATTERN.fullmatch(m) for m in value):
        raise ModelListError(f"models: expected a list of at most {MAX_MODELS} model names or "
                             "glob patterns (1-128 of A-Z a-z 0-9 . _ : / @ - * ? [ ])")
    if len(set(value)) != len(value):
        raise ModelListError("models: each model or pattern may appear once")
    return tuple(value)


def model_allowed(patterns: Iterable[str], model: str) -> bool:
    """True when `patterns` is empty or one of them matches `model`."""
    found = False
    for pattern in patterns:
        found = True
        if fnmatchcase(model, pattern):
            return True
    return not found
