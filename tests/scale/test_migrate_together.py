"""Instances starting together migrate together: they take turns, and every one of them succeeds.

Every `kessai` command migrates before it does anything else, so a deploy that starts several
instances at once runs several migrations at once. On a new PostgreSQL database, without the
migration lock, three of four such `kessai migrate` processes failed on the catalog's unique keys
(each tried to create the same tables).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from e2e.support import KESSAI, base_env
from kessai.adapters.db import Database
from kessai.adapters.migrate import alembic_config

MIGRATORS = 4
TRIALS = 2
VERSIONS = sa.text("SELECT version_num FROM alembic_version")


def _migrate_at_once(url: str) -> list[str]:
    """Run MIGRATORS `kessai migrate` processes on ``url`` together; answers the failures."""
    command = [KESSAI, "migrate", "--database", url]
    processes = [
        subprocess.Popen(command, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(MIGRATORS)
    ]
    failures = []
    for process in processes:
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(output.decode(errors="replace")[-2000:])
    return failures


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_migrations_of_a_new_database_all_succeed(
    kind: str, database_url: Callable[[str], str], tmp_path: Path
) -> None:
    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    for trial in range(TRIALS):
        url = f"sqlite:///{tmp_path / f'{trial}.db'}" if kind == "sqlite" else database_url(kind)
        assert _migrate_at_once(url) == []
        db = Database(url)
        try:
            rows = db.run_sync(lambda conn: conn.execute(VERSIONS).all())
        finally:
            db.close()
        assert {row[0] for row in rows} == heads


def test_an_unknown_postgresql_database_is_one_plain_line(postgres_url: str) -> None:
    # The driver's refusal (not a connection error): reported like the others, password hidden.
    server = postgres_url.rsplit("/", 1)[0]
    user, _, host = server.partition("://")[2].partition("@")
    url = f"postgresql://{user}:hunter2-secret@{host}/kessai_no_such_database"
    argv = [KESSAI, "migrate", "--database", url]
    done = subprocess.run(
        argv, env=base_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    shown = f"postgresql://{user}:***@{host}/kessai_no_such_database"
    assert done.stderr.startswith(f"error cannot open the database {shown}: ")
    assert "does not exist" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
