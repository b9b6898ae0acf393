from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from kessai.config import Settings, SettingsError, log_level_from_env
from kessai.console.config import ConsoleConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
CONSOLE_DOC = DOC.with_name("console.md")


@pytest.mark.parametrize("name", [f.name for f in fields(Settings)])
def test_every_setting_is_documented(name: str) -> None:
    assert f"`KESSAI_{name.upper()}`" in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [f.name for f in fields(ConsoleConfig)])
def test_every_console_setting_is_documented(name: str) -> None:
    assert f"`KESSAI_CONSOLE_{name.upper()}`" in CONSOLE_DOC.read_text(encoding="utf-8")
    assert "(console.md#configuration)" in DOC.read_text(encoding="utf-8")


def test_environment_overrides_defaults_with_the_right_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KESSAI_QR_TTL_DEFAULT_SECONDS", "120")
    monkeypatch.setenv("KESSAI_SANDBOX_ENABLED", "true")
    monkeypatch.setenv("KESSAI_PROVIDER_TIMEOUT_SECONDS", "2.5")
    settings = Settings.from_env(public_url="http://pos.example")
    assert settings.qr_ttl_default_seconds == 120
    assert settings.sandbox_enabled is True
    assert settings.provider_timeout_seconds == 2.5
    assert settings.public_url == "http://pos.example"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KESSAI_WORKER_BATCH_SIZE", "abc", "must be a whole number, not 'abc'"),
        ("KESSAI_WORKER_BATCH_SIZE", "-5", "must be more than 0, not -5"),
        ("KESSAI_WORKER_BATCH_SIZE", "0", "must be more than 0, not 0"),
        ("KESSAI_WORKER_BATCH_SIZE", "2.5", "must be a whole number"),
        ("KESSAI_PROVIDER_TIMEOUT_SECONDS", "0", "must be more than 0"),
        ("KESSAI_PROVIDER_TIMEOUT_SECONDS", "nan", "must be a finite number"),
        ("KESSAI_PROVIDER_TIMEOUT_SECONDS", "inf", "must be a finite number"),
        ("KESSAI_SESSION_TOUCH_INTERVAL_SECONDS", "-1", "must be 0 or more"),
        ("KESSAI_SANDBOX_ENABLED", "flase", "must be true or false, not 'flase'"),
        ("KESSAI_QR_TTL_MIN_SECONDS", "900", "KESSAI_QR_TTL_DEFAULT_SECONDS must lie between"),
    ],
)
def test_a_value_a_setting_cannot_take_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message) as raised:
        Settings.from_env()
    assert str(raised.value).startswith("KESSAI_")


def test_zero_empty_and_the_spellings_of_yes_and_no(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESSAI_SESSION_TOUCH_INTERVAL_SECONDS", "0")  # touch on every call
    monkeypatch.setenv("KESSAI_LOGIN_ADDRESS_MAX_FAILURES", "0")  # no per-address limit
    monkeypatch.setenv("KESSAI_WORKER_BATCH_SIZE", "  ")  # set to nothing: the default
    for spelling, meaning in (("on", True), ("YES", True), ("1", True), ("off", False)):
        monkeypatch.setenv("KESSAI_WORKER_IN_SERVE", spelling)
        settings = Settings.from_env()
        assert settings.worker_in_serve is meaning
        assert settings.session_touch_interval_seconds == 0
        assert settings.login_address_max_failures == 0
        assert settings.worker_batch_size == Settings().worker_batch_size


def test_limits_are_checked_however_the_settings_are_made() -> None:
    with pytest.raises(SettingsError, match="KESSAI_MAX_BODY_BYTES must be more than 0"):
        Settings(max_body_bytes=0)


def test_the_sandbox_is_off_unless_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # A sandbox code "pays" without moving money: a gateway must never offer it by default.
    monkeypatch.delenv("KESSAI_SANDBOX_ENABLED", raising=False)
    assert Settings().sandbox_enabled is False
    assert Settings.from_env().sandbox_enabled is False


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KESSAI_CONSOLE_PAGE_SIZE", "abc", "must be a whole number, not 'abc'"),
        ("KESSAI_CONSOLE_PAGE_SIZE", "0", "must be more than 0, not 0"),
        ("KESSAI_CONSOLE_SESSION_IDLE_SECONDS", "-5", "must be more than 0, not -5"),
        ("KESSAI_CONSOLE_CSV_MAX_ROWS", "1e5", "must be a whole number, not '1e5'"),
        ("KESSAI_CONSOLE_COOKIE_SECURE", "maybe", "must be auto, true or false, not 'maybe'"),
    ],
)
def test_a_console_value_it_cannot_take_is_refused_by_name(
    variable: str, value: str, message: str
) -> None:
    # The console's settings are checked as the gateway's are, instead of ending in a traceback
    # (or, for the cookie flag, silently meaning false).
    with pytest.raises(SettingsError, match=message) as raised:
        ConsoleConfig.from_env("https://pay.example.jp", {variable: value})
    assert str(raised.value).startswith(f"{variable} ")


def test_a_console_variable_set_to_nothing_counts_as_unset() -> None:
    env = {"KESSAI_CONSOLE_PAGE_SIZE": "", "KESSAI_CONSOLE_COOKIE_SECURE": "  "}
    config = ConsoleConfig.from_env("https://pay.example.jp", env)
    assert config.page_size == ConsoleConfig().page_size
    assert config.cookie_secure is True  # auto: the public URL is https


def test_the_console_cookie_flag_takes_the_spellings_of_yes_and_no() -> None:
    for spelling, meaning in (("on", True), ("YES", True), ("1", True), ("off", False)):
        env = {"KESSAI_CONSOLE_COOKIE_SECURE": spelling}
        for url in ("http://127.0.0.1:8000", "https://pay.example.jp"):
            assert ConsoleConfig.from_env(url, env).cookie_secure is meaning
    env = {"KESSAI_CONSOLE_COOKIE_SECURE": "Auto"}
    assert ConsoleConfig.from_env("http://127.0.0.1:8000", env).cookie_secure is False


def test_the_log_level_is_a_level_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KESSAI_LOG_LEVEL", raising=False)
    assert log_level_from_env() == "INFO"
    for value, level in (("", "INFO"), (" debug ", "DEBUG"), ("WARNING", "WARNING")):
        monkeypatch.setenv("KESSAI_LOG_LEVEL", value)
        assert log_level_from_env() == level
    monkeypatch.setenv("KESSAI_LOG_LEVEL", "VERBOSE")
    with pytest.raises(SettingsError, match=r"^KESSAI_LOG_LEVEL must be .*, not 'VERBOSE'$"):
        log_level_from_env()
