"""Print the configuration table for the README from the settings' own field metadata."""

from __future__ import annotations

import dataclasses
import io
import sys
import typing
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from sidecar.settings import Secret, Settings, env_name_of


def rows(cls: type[Any] = Settings, prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out.extend(rows(typing.cast(type[Any], hint), f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else ""
        shown = "" if isinstance(default, Secret) else repr(default) if default != () else "[]"
        out.append((f"{prefix}{f.name}", env_name_of(prefix + f.name), shown, f.metadata["help"]))
    return out


def main() -> None:
    print("| setting (TOML) | environment | default | meaning |")
    print("|---|---|---|---|")
    for name, env, default, help_ in rows():
        print(f"| `{name}` | `{env}` | `{default}` | {help_} |")


def write_readme(path: Path) -> None:
    """Replace the table between the README's config-table markers."""
    out = io.StringIO()
    with redirect_stdout(out):
        main()
    text = path.read_text()
    start = text.index("\n", text.index("<!-- config-table:start")) + 1
    end = text.index("<!-- config-table:end -->")
    path.write_text(text[:start] + out.getvalue() + text[end:])


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_readme(Path(__file__).resolve().parent.parent / "README.md")
    else:
        main()
