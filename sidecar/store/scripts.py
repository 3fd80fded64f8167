"""Lua scripts shipped in `store/lua/`, loaded once per process and re-loaded on NOSCRIPT."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its name (file stem), source and SHA-1 (what EVALSHA sends)."""

    name: str
    source: str
    sha: str


def load_scripts() -> dict[str, Script]:
    """Read every `lua/*.lua` file of the package once; the SHA is computed locally."""
    scripts: dict[str, Script] = {}
    for entry in resources.files("sidecar.store").joinpath("lua").iterdir():
        if entry.name.endswith(".lua"):
            source = entry.read_text(encoding="utf-8")
            name = entry.name.removesuffix(".lua")
            sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
            scripts[name] = Script(name, source, sha)
    return scripts
