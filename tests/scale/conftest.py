"""Fixtures of the scale-out tier: a private PostgreSQL cluster, fresh databases, servers.

scripts/test starts the cluster and exports KESSAI_TEST_POSTGRES_URL; run alone, this tier starts
one itself (scripts/pg-cluster, which installs Debian's postgresql when it is missing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2e.support import postgres_server

from .support import create_database

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server (scripts/test starts one; alone, the tier starts its own)."""
    with postgres_server() as url:
        yield url
