from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from kessai.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.mark.parametrize("name", [f.name for f in fields(Settings)])
def test_every_setting_is_documented(name: str) -> None:
    assert f"`KESSAI_{name.upper()}`" in DOC.read_text(encoding="utf-8")


def test_environment_overrides_defaults_with_the_right_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KESSAI_QR_TTL_DEFAULT_SECONDS", "120")
    monkeypatch.setenv("KESSAI_SANDBOX_ENABLED", "false")
    monkeypatch.setenv("KESSAI_PROVIDER_TIMEOUT_SECONDS", "2.5")
    settings = Settings.from_env(public_url="http://pos.example")
    assert settings.qr_ttl_default_seconds == 120
    assert settings.sandbox_enabled is False
    assert settings.provider_timeout_seconds == 2.5
    assert settings.public_url == "http://pos.example"
