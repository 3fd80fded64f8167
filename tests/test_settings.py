"""Settings: file and environment, one-line errors naming the field, secrets masked."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from sidecar.__main__ import main
from sidecar.errors import ConfigError
from sidecar.settings import load_settings


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """A value in SIDECAR_* wins over the TOML file; the rest comes from the file."""
    config = tmp_path / "sidecar.toml"
    config.write_text('listen = "127.0.0.1:7000"\n[store]\ntimeout_s = 0.5\n'
                      '[[limits.key]]\nwindow_s = 60\nrequests = 10\n')
    settings = load_settings(str(config), env={"SIDECAR_STORE_TIMEOUT_S": "0.1"})
    assert settings.listen == "127.0.0.1:7000"
    assert settings.store.timeout_s == 0.1
    assert settings.limits.key[0].requests == 10


BAD = [
    ({"SIDECAR_STORE_TIMEOUT_S": "fast"}, "store.timeout_s: invalid value"),
    ({"SIDECAR_STORE_TIMEOUT_S": "0"}, "store.timeout_s: must be at least"),
    ({"SIDECAR_WORKERS": "1.5"}, "workers: invalid value"),
    ({"SIDECAR_LISTEN": "8080"}, "listen: expected host:port"),
    ({"SIDECAR_STORE_URL": "mysql://x"}, "store.url: expected"),
    ({"SIDECAR_UPSTREAM_URL": "http://api.example.com"}, "upstream.url: plain http"),
    ({"SIDECAR_UPSTREAM_URL": "ftp://x"}, "upstream.url: expected an http(s) URL"),
    ({"SIDECAR_UPSTREAM_URL": "https://u:p@api.example.com"}, "upstream.url: must not carry"),
    ({"SIDECAR_UPSTREAM_ALLOW_INSECURE": "maybe"}, "upstream.allow_insecure: invalid value"),
    ({"SIDECAR_LOG_LEVEL": "loud"}, "log.level: invalid value (expected one of"),
    ({"SIDECAR_LIMITS_KEY": "[{\"window_s\": 60}]"}, "limits.key[0]: needs requests, tokens or cost_usd"),
    ({"SIDECAR_LIMITS_KEY": "not json"}, "limits.key: expected a JSON list"),
    ({"SIDECAR_LIMITS_TENANT": "[{\"window_s\": 0, \"requests\": 1}]"}, "limits.tenant[0].window_s"),
    ({"SIDECAR_LIMITS_ON_STORE_ERROR": "maybe"}, "limits.on_store_error: invalid value"),
]


@pytest.mark.parametrize(("env", "message"), BAD, ids=[m for _, m in BAD])
def test_invalid_values_name_the_field(env: dict[str, str], message: str) -> None:
    """Each invalid value raises a one-line error that names the field."""
    with pytest.raises(ConfigError) as info:
        load_settings(env=env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_file_key_is_an_error(tmp_path: Path) -> None:
    """A typo in the file is refused rather than silently ignored."""
    config = tmp_path / "sidecar.toml"
    config.write_text("[store]\nurll = 'redis://x'\n")
    with pytest.raises(ConfigError, match=r"store\.urll: unknown setting"):
        load_settings(str(config), env={})


def test_cli_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`sidecar check-config` with a bad value prints one line and exits with status 2."""
    monkeypatch.setenv("SIDECAR_STORE_TIMEOUT_S", "-1")
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "store.timeout_s" in err


def test_check_config_masks_secrets(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """check-config prints the effective settings without the admin token or provider key."""
    token, key = secrets.token_urlsafe(32), "provkey-" + "y" * 20
    monkeypatch.setenv("SIDECAR_ADMIN_TOKEN", token)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert token not in out and key not in out
    assert '"token": "***"' in out and '"key": "***"' in out


@pytest.mark.parametrize("url", [
    "redis://:{pw}@10.0.0.5:6379/0",
    "rediss://app:{pw}@redis.internal:6380/1",
    "redis+sentinel://app:{pw}@s1:26379,s2:26379/mymaster/0",
    "redis+cluster://{pw}@node1:7000",
])
def test_check_config_hides_store_passwords(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], url: str) -> None:
    """A password in store.url never reaches check-config's output; host and user still do."""
    password = "pw-" + "z" * 16
    monkeypatch.setenv("SIDECAR_STORE_URL", url.format(pw=password))
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert password not in out
    assert ":***@" in out


def test_memory_store_refuses_several_workers(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """memory:// is per process, so --workers 2 on it is a config error, not silent split limits."""
    monkeypatch.delenv("SIDECAR_STORE_URL", raising=False)
    assert main(["serve", "--workers", "2"]) == 2
    assert "memory://" in capsys.readouterr().err
