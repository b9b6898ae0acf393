"""Fixtures of the scale-out tier: a private PostgreSQL cluster, fresh databases, servers.

scripts/test starts the cluster and exports KESSAI_TEST_POSTGRES_URL; run alone, this tier starts
one itself (scripts/pg-cluster, which installs Debian's postgresql when it is missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2e.support import free_port

from .support import create_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server (its `postgres` database)."""
    given = os.environ.get("KESSAI_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    folder = tempfile.mkdtemp(prefix="kessai-pg-")
    script = str(ROOT / "scripts" / "pg-cluster")
    url = subprocess.run(
        [script, "start", folder, str(free_port())], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([script, "stop", folder], check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database_url(
    request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path
) -> Callable[[str], str]:
    """Make a fresh, empty database of the kind asked for ("sqlite" or "postgresql")."""

    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'k.db'}"
        return create_database(postgres_url)

    return make
