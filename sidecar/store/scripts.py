"""Lua scripts shipped in `store/lua/`, loaded once per process and re-loaded on NOSCRIPT.

Two scripts that usually leave in the same write for the same tenant are also composed into
one (`PAIRS`): admission and the abuse check (before the upstream call), settlement and the
output-token record (after it). The composed script reads Redis `TIME` at most once for both
parts and costs one EVALSHA instead of two; each part sees its own KEYS and ARGV and returns what it
returns alone, so either part can still run alone with the same result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

TIME_CALL = "redis.call('TIME')"
# (first, second) part of each composed script; its name is "first+second".
PAIRS: tuple[tuple[str, str], ...] = (("admit", "abuse"), ("settle", "abuse_output"))


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its name (file stem), source and SHA-1 (what EVALSHA sends)."""

    name: str
    source: str
    sha: str


def _script(name: str, source: str) -> Script:
    return Script(name, source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())


def compose(first: Script, second: Script) -> Script:
    """One script running `first` then `second` on one reading of Redis TIME.

    Called as EVALSHA sha <keys of both> <n keys of first> <n args of first> <args of both>;
    returns {reply of first, reply of second}, either of them an error reply when that part
    failed (the other stands)."""
    parts = []
    for index, script in enumerate((first, second), 1):
        if script.source.count(TIME_CALL) > 1:
            raise ValueError(f"{script.name}.lua reads TIME more than once: cannot be composed")
        body = script.source.replace(TIME_CALL, "time()")
        parts.append(f"local function part{index}(KEYS, ARGV)\n{body}\nend\n")
    source = (
        f"-- {first.name}.lua and {second.name}.lua composed (sidecar/store/scripts.py): one TIME,\n"
        "-- one call. ARGV[1], ARGV[2]: the first part's KEYS and ARGV counts.\n"
        "local TIME = nil\n"
        "local function time()  -- read once, and only when a part asks\n"
        "  if not TIME then TIME = redis.call('TIME') end\n"
        "  return TIME\n"
        "end\n"
        f"{''.join(parts)}"
        "local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
        "local k1, a1, k2, a2 = {}, {}, {}, {}\n"
        "for i = 1, #KEYS do\n"
        "  if i <= nk then k1[#k1 + 1] = KEYS[i] else k2[#k2 + 1] = KEYS[i] end\n"
        "end\n"
        "for i = 3, #ARGV do\n"
        "  if i <= 2 + na then a1[#a1 + 1] = ARGV[i] else a2[#a2 + 1] = ARGV[i] end\n"
        "end\n"
        "-- A part that fails answers an error in its place; the other part's answer (and what\n"
        "-- it wrote) stands, as when each runs alone.\n"
        "local function run(part, keys, argv)\n"
        "  local ok, reply = pcall(part, keys, argv)\n"
        "  if ok then return reply end\n"
        "  if type(reply) == 'table' and reply.err then return reply end\n"
        "  return {err = 'ERR ' .. tostring(reply)}\n"
        "end\n"
        "return {run(part1, k1, a1), run(part2, k2, a2)}\n")
    return _script(f"{first.name}+{second.name}", source)


def load_scripts() -> dict[str, Script]:
    """Read every `lua/*.lua` file of the package once (the SHA is computed locally) and compose
    the PAIRS."""
    scripts: dict[str, Script] = {}
    for entry in resources.files("sidecar.store").joinpath("lua").iterdir():
        if entry.name.endswith(".lua"):
            name = entry.name.removesuffix(".lua")
            scripts[name] = _script(name, entry.read_text(encoding="utf-8"))
    for first, second in PAIRS:
        composed = compose(scripts[first], scripts[second])
        scripts[composed.name] = composed
    return scripts
