"""Arbitrary TOML files and SIDECAR_* values: `load_settings` gives Settings or one-line
ConfigError, never another exception (a bad deploy must exit 2 naming the field, not crash)."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.errors import ConfigError
from sidecar.settings import Settings, env_name_of, load_settings
from tests.fuzz.harness import fuzz


def _fields(cls: type[Any], prefix: str = "") -> list[str]:
    """Every dotted setting name, read from the Settings dataclasses themselves."""
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names += _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


FIELDS = _fields(Settings)
SECTIONS = sorted({name.split(".")[0] for name in FIELDS if "." in name})

plausible = st.sampled_from([
    "", "0", "1", "-1", "0.5", "1e9", "nan", "inf", "true", "false", "yes", "[]", "{}", "null",
    "127.0.0.1:8080", "[::1]:80", ":80", "h:", "h:65536", "memory://", "redis://127.0.0.1:6379/0",
    "rediss+cluster://h", "http://127.0.0.1:1", "https://api.example", "ftp://x", "http://u:p@h",
    '[{"window_s": 60, "requests": 10}]', '[{"window_s": 0}]', '[{"tokens": -1}]', "DEBUG", "block",
    "shadow", "allow", "user,tool", "secrets=block", "x" * 300,
])


env_values = st.one_of(plausible, st.text(max_size=40),
                       st.builds(lambda a, b: a + b, plausible, st.text(max_size=8)))


def toml_string(text: str) -> str:
    """A TOML basic string holding `text` (control characters escaped, the rest verbatim)."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            out.append("?")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) \
            else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


toml_scalars = st.one_of(st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                         st.floats(), env_values)
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["window_s", "requests", "tokens", "x"]), inner, max_size=3)),
    max_leaves=8)


@st.composite
def toml_documents(draw: st.DrawFn) -> bytes:
    """A TOML file setting real fields (and sometimes unknown ones) to values of any type."""
    top: list[str] = []
    tables: dict[str, list[str]] = {}
    for name in draw(st.lists(st.sampled_from([*FIELDS, "nope", "store.nope", "store"]), max_size=6,
                              unique=True)):
        line = f"{name.split('.')[-1]} = {toml_value(draw(toml_values))}"
        if "." in name:
            tables.setdefault(name.split(".")[0], []).append(line)
        else:
            top.append(line)
    text = "\n".join(top) + "\n" + "".join(
        f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in tables.items())
    return text.encode()


def check(path: str | None, env: dict[str, str]) -> None:
    """Settings, or a ConfigError of one non-empty line; anything else is a bug."""
    try:
        settings = load_settings(path, env=env)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return
    assert isinstance(settings, Settings)


@fuzz(300)
@given(st.dictionaries(st.sampled_from([env_name_of(name) for name in FIELDS]), env_values, max_size=5))
def test_any_environment_gives_settings_or_config_error(env: dict[str, str]) -> None:
    """Any SIDECAR_* values give valid Settings or one ConfigError line, never a crash."""
    check(None, env)


@fuzz(200)
@given(st.one_of(toml_documents(), st.text(max_size=300).map(lambda t: t.encode())))
def test_any_toml_file_gives_settings_or_config_error(tmp_path: Path, document: bytes) -> None:
    """Any UTF-8 TOML document gives valid Settings or one ConfigError line, never a crash."""
    path = tmp_path / "sidecar.toml"
    path.write_bytes(document)
    check(str(path), {})


FOUND_BY_FUZZING = [
    ("listen with a superscript digit in the port", None, {"SIDECAR_LISTEN": "127.0.0.1:8\u00b2"}),
    ("admin.listen with a superscript digit", None, {"SIDECAR_ADMIN_LISTEN": "h:\u00b9"}),
    ("store.url with an unclosed IPv6 bracket", None, {"SIDECAR_STORE_URL": "redis://[::1"}),
    ("upstream.url with an unclosed IPv6 bracket", None, {"SIDECAR_UPSTREAM_URL": "https://[::1"}),
    ("config file that is not UTF-8", b"listen = \"\xff\"\n", {}),
    ("config file with deeply nested arrays", b"x = " + b"[" * 3000 + b"]" * 3000 + b"\n", {}),
]


@pytest.mark.parametrize(("case", "document", "env"), FOUND_BY_FUZZING, ids=[c[0] for c in FOUND_BY_FUZZING])
def test_known_crashes_become_config_errors(
    tmp_path: Path, case: str, document: bytes | None, env: dict[str, str],
) -> None:
    """Each of these bad configurations is refused with one ConfigError line, not a traceback."""
    path = None
    if document is not None:
        (tmp_path / "sidecar.toml").write_bytes(document)
        path = str(tmp_path / "sidecar.toml")
    check(path, env)
