"""The usage price table and label settings: TOML and env JSON both work, bad entries name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.settings import ModelPrice, load_settings


def test_price_table_from_toml_and_from_env(tmp_path: Path) -> None:
    """A TOML table of model -> {input, output} and the same as JSON in SIDECAR_USAGE_PRICES."""
    config = tmp_path / "sidecar.toml"
    config.write_text('[usage]\nmetric_models = ["gpt-4o"]\n'
                      '[usage.prices]\n"gpt-4o" = {input = 2.5, output = 10}\n')
    settings = load_settings(str(config), env={})
    assert settings.usage.prices == (ModelPrice("gpt-4o", 2.5, 10.0),)
    assert settings.usage.metric_models == ("gpt-4o",)
    env = load_settings(env={"SIDECAR_USAGE_PRICES": '{"m": {"input": 0, "output": 0.6}}'})
    assert env.usage.prices == (ModelPrice("m", 0.0, 0.6),)


@pytest.mark.parametrize(("value", "message"), [
    ('["gpt-4o"]', "usage.prices: expected a table of model"),
    ('{"m": {"input": 1}}', "usage.prices.m: expected {input"),
    ('{"m": {"input": 1, "output": 2, "cached": 1}}', "usage.prices.m: expected {input"),
    ('{"m": {"input": -1, "output": 2}}', "usage.prices.m.input: expected dollars per million"),
    ('{"m": {"input": 1, "output": true}}', "usage.prices.m.output: expected dollars per million"),
    ("not json", "usage.prices: expected a JSON object"),
])
def test_bad_price_entries_name_the_field(value: str, message: str) -> None:
    """Each malformed price is refused at start with the field's name."""
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace(".", r"\.")):
        load_settings(env={"SIDECAR_USAGE_PRICES": value})


def test_label_cap_bounds() -> None:
    """usage.max_label_values is 1 to 1000."""
    with pytest.raises(ConfigError, match=r"usage\.max_label_values: must be at most 1000"):
        load_settings(env={"SIDECAR_USAGE_MAX_LABEL_VALUES": "5000"})
