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


def test_readme_covers_the_first_ten_minutes() -> None:
    """What a new user needs in the first ten minutes is in the README: where the CLI is, how to
    steer the mock, that a rate limit needs an admin token on `make run` and a key with
    `limits`, why the famous example secrets pass, every command (scan, --version)."""
    text = README.read_text()
    for needed in (".venv/bin/sidecar", "mock-echo", "mock-429", "mock-hang",
                   "SIDECAR_ADMIN_TOKEN=", '"limits": [{"window_s"', "AKIAIOSFODNN7EXAMPLE",
                   "4111 1111 1111 1111", "deliberately", "sidecar scan", "sidecar --version",
                   "sidecar keys list "):
        assert needed in text, needed


def test_license_is_the_apache_2_text_pyproject_names() -> None:
    """LICENSE holds the Apache License 2.0 that pyproject.toml and the image label declare."""
    root = README.parent
    license_text = (root / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text
    assert 'license = "Apache-2.0"' in (root / "pyproject.toml").read_text()
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (root / "Dockerfile").read_text()
