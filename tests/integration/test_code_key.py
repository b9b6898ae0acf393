"""The key for customer codes is sealed with the master key wherever one is configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from kessai.adapters import repository as repo
from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.cli.database import opened
from kessai.cli.main import app
from kessai.domain.errors import InternalError

KEY_A = "a1" * 32
KEY_B = "b2" * 32


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'k.db'}"


def _stored(db: Database) -> str:
    query = sa.select(t.meta.c.value).where(t.meta.c.key == repo.CODE_KEY_NAME)
    return str(db.run_sync(lambda conn: conn.execute(query).scalar_one(), write=False))


def _key(url: str) -> str:
    # A fresh Database each time: the key is cached per engine.
    db = Database(url)
    try:
        return db.run_sync(repo.code_key, write=False)
    finally:
        db.close()


def _migrate(url: str) -> None:
    """What every command does first: bring the schema up to date (and seal the key)."""
    db = Database(url)
    upgrade(db)
    db.close()


@pytest.fixture
def clear_key(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("KESSAI_SECRET_KEY", raising=False)
    monkeypatch.delenv("KESSAI_SECRET_KEY_FILE", raising=False)
    db = Database(url)
    upgrade(db)
    clear = _stored(db)
    db.close()
    yield clear


def test_a_master_key_seals_the_code_key_and_the_key_stays_the_same(
    url: str, clear_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hashes stored before the sealing must still match: the key is hidden, not changed.
    assert len(clear_key) == 64
    assert _key(url) == clear_key
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    db = Database(url)
    sealed = _stored(db)
    db.close()
    assert sealed.startswith(repo.SEALED)
    assert clear_key not in sealed
    assert _key(url) == clear_key
    # Sealed once: a later start changes nothing.
    _migrate(url)
    db = Database(url)
    assert _stored(db) == sealed
    db.close()


def test_a_sealed_key_without_the_master_key_is_a_clear_error(
    url: str, clear_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    monkeypatch.delenv("KESSAI_SECRET_KEY")
    with pytest.raises(InternalError, match="sealed with the master key: set KESSAI_SECRET_KEY"):
        _key(url)


def test_a_new_master_key_put_first_seals_the_key_again(
    url: str, clear_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rotation: with the new key first and the old one after it, the next start seals the key
    # with the new one, after which the old one can be dropped.
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    monkeypatch.setenv("KESSAI_SECRET_KEY", f"{KEY_B},{KEY_A}")
    _migrate(url)
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_B)
    assert _key(url) == clear_key
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    with pytest.raises(InternalError, match="not among the configured keys"):
        _key(url)


def test_a_command_with_a_master_key_that_cannot_unseal_stops_with_one_line(
    url: str, clear_key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hashing codes under another key would answer wrong things quietly: refuse to start.
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_B)
    with pytest.raises(typer.Exit) as stopped, opened(url):
        pass
    assert stopped.value.exit_code == 1
    error = capsys.readouterr().err
    assert "sealed with master key" in error
    assert "Traceback" not in error


def test_a_lost_master_key_is_survived_by_a_new_code_key(
    url: str, clear_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a way out, a lost master key would stop every payment for good.
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_B)
    runner = CliRunner()
    refused = runner.invoke(app, ["admin", "key", "reset-code-key", "--database", url])
    assert refused.exit_code == 2
    done = runner.invoke(app, ["admin", "key", "reset-code-key", "--yes", "--database", url])
    assert done.exit_code == 0, done.output
    fresh = _key(url)
    assert fresh != clear_key and len(fresh) == 64
    db = Database(url)
    stored = _stored(db)
    actions = db.run_sync(
        lambda conn: list(conn.execute(sa.select(t.audit_events.c.action)).scalars()), write=False
    )
    db.close()
    assert stored.startswith(repo.SEALED) and fresh not in stored
    assert "codes.key_reset" in actions
    with opened(url):  # and every command starts again
        pass
