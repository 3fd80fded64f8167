"""The README's configuration table is the one the settings generate."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

from tools.config_table import main as print_table

README = Path(__file__).resolve().parent.parent / "README.md"


def generated_table() -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        print_table()
    return out.getvalue()


def test_config_table_is_current() -> None:
    """Every setting, its environment name and default in the README match the code."""
    text = README.read_text()
    start = text.index("<!-- config-table:start")
    start = text.index("\n", start) + 1
    end = text.index("<!-- config-table:end -->")
    assert text[start:end] == generated_table(), "run: python tools/config_table.py --write"


def test_readme_names_the_two_commands() -> None:
    """A new user finds `make run` and `make test` in the README."""
    text = README.read_text()
    assert "make run" in text and "make test" in text
