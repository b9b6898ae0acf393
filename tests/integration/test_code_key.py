"""The key for customer codes is sealed with the master key, and every instance still opens it.

Sealing is done when a database is created with a master key configured, and on request
(`kessai admin key seal-codes`), with every configured key: an instance holding any one of them
opens it, so a rotation never shuts out an instance that has only the old key.
"""

from __future__ import annotations

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
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("KESSAI_SECRET_KEY", raising=False)
    monkeypatch.delenv("KESSAI_SECRET_KEY_FILE", raising=False)
    return f"sqlite:///{tmp_path / 'k.db'}"


def _migrate(url: str) -> None:
    """What every command does first: bring the schema up to date."""
    db = Database(url)
    upgrade(db)
    db.close()


def _meta(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        rows = db.run_sync(lambda conn: conn.execute(sa.select(t.meta)).all(), write=False)
    finally:
        db.close()
    return {str(r.key): str(r.value) for r in rows}


def _key(url: str) -> str:
    # A fresh Database each time: the key is cached per engine, as in a process.
    db = Database(url)
    try:
        return db.run_sync(repo.code_key, write=False)
    finally:
        db.close()


def _kessai(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(app, list(args))
    return done.exit_code, done.output


def _clear_database(url: str) -> str:
    _migrate(url)
    clear = _key(url)
    assert len(clear) == 64 and clear in _meta(url).values()
    return clear


def test_sealing_hides_the_key_and_keeps_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hashes stored before the sealing must still match: the key is hidden, not changed.
    clear = _clear_database(url)
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    # Another command with the key does not seal on its own: instances without the key yet
    # must go on working until the operator seals.
    _migrate(url)
    assert _meta(url)[repo.CODE_KEY_NAME] == clear
    assert _kessai("admin", "key", "seal-codes", "--database", url)[0] == 0
    meta = _meta(url)
    assert meta[repo.CODE_KEY_NAME] == repo.SEALED
    assert not any(clear in value for value in meta.values())
    assert _key(url) == clear


def test_a_database_created_with_a_master_key_is_sealed_from_the_start(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    assert _meta(url)[repo.CODE_KEY_NAME] == repo.SEALED
    assert len(_key(url)) == 64


def test_a_rotation_never_shuts_out_an_instance_with_either_key(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clear = _clear_database(url)
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _kessai("admin", "key", "seal-codes", "--database", url)
    # The new key is added (second, then first) and the key sealed again with both: an
    # instance still running with the old key alone opens it, as does one with the new.
    monkeypatch.setenv("KESSAI_SECRET_KEY", f"{KEY_B},{KEY_A}")
    code, output = _kessai("admin", "key", "seal-codes", "--database", url, "--json")
    assert code == 0, output
    for only in (KEY_A, KEY_B):
        monkeypatch.setenv("KESSAI_SECRET_KEY", only)
        assert _key(url) == clear
    # The old key dropped everywhere, sealed with the new one alone: the old no longer opens.
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_B)
    assert _kessai("admin", "key", "seal-codes", "--database", url)[0] == 0
    assert _key(url) == clear
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    with pytest.raises(InternalError, match="none of which is configured"):
        _key(url)


def test_a_sealed_key_without_the_master_key_stops_a_command_with_one_line(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hashing codes under another key would answer wrong things quietly: refuse to start.
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    for configured in (KEY_B, None):
        if configured is None:
            monkeypatch.delenv("KESSAI_SECRET_KEY")
        else:
            monkeypatch.setenv("KESSAI_SECRET_KEY", configured)
        with pytest.raises(typer.Exit) as stopped, opened(url):
            pass
        assert stopped.value.exit_code == 1
        error = capsys.readouterr().err
        assert "key for customer codes is sealed" in error
        assert "Traceback" not in error


def test_a_lost_master_key_is_survived_by_a_new_code_key(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a way out, a lost master key would stop every payment for good.
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_A)
    _migrate(url)
    old = _key(url)
    monkeypatch.setenv("KESSAI_SECRET_KEY", KEY_B)
    assert _kessai("admin", "key", "reset-code-key", "--database", url)[0] == 2
    code, output = _kessai("admin", "key", "reset-code-key", "--yes", "--database", url)
    assert code == 0, output
    fresh = _key(url)
    assert fresh != old and len(fresh) == 64
    assert not any(fresh in value for value in _meta(url).values())
    db = Database(url)
    actions = db.run_sync(
        lambda conn: list(conn.execute(sa.select(t.audit_events.c.action)).scalars()), write=False
    )
    db.close()
    assert "codes.key_reset" in actions
    with opened(url):  # and every command starts again
        pass


def test_the_key_commands_refuse_a_missing_or_malformed_master_key_with_one_line(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _clear_database(url)
    code, output = _kessai("admin", "key", "seal-codes", "--database", url)
    assert (code, "sealing needs a master key" in output) == (1, True), output
    monkeypatch.setenv("KESSAI_SECRET_KEY", "not-a-key")
    for command in (("seal-codes",), ("reset-code-key", "--yes")):
        code, output = _kessai("admin", "key", *command, "--database", url)
        assert code == 1, output
        assert "KESSAI_SECRET_KEY" in output and "Traceback" not in output
    # Nothing was sealed or replaced by the refused commands.
    assert _meta(url)[repo.CODE_KEY_NAME] != repo.SEALED
