"""Opening the database for one command, with a plain message when that cannot be done."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.markup import escape

from kessai.adapters.db import Database, normalise_url
from kessai.adapters.migrate import upgrade

# Exit status of a command that could not open or migrate its database (domain errors exit 2).
CANNOT_OPEN_EXIT: int = 1

# One line, however long: logs and scripts read it whole.
_err = Console(stderr=True, soft_wrap=True)


def shown_url(url: str) -> str:
    """The database URL as a message may show it: with any password hidden."""
    try:
        given = url if "://" in url else normalise_url(url)  # a bare path, as its sqlite URL
        return sa.engine.make_url(given).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(an unreadable database URL)"


def _cannot_open(url: str, exc: BaseException) -> NoReturn:
    # The driver's own words (a refused connection, an unknown database, a missing folder), not
    # SQLAlchemy's wrapper with its statement and link, nor a traceback.
    reason = str(getattr(exc, "orig", None) or exc).strip() or type(exc).__name__
    _err.print(
        f"[red]error[/red] cannot open the database {escape(shown_url(url))}: {escape(reason)}"
    )
    raise typer.Exit(CANNOT_OPEN_EXIT) from exc


@contextmanager
def opened(url: str) -> Iterator[Database]:
    """The database for one command, migrated to the newest schema.

    One that cannot be opened or migrated (an unsupported URL, a folder that does not exist, a
    server that refuses the connection, an unknown database or role) ends the command with one
    line on stderr, naming the database without its password, and exit status 1.
    """
    try:
        db = Database(url)
    except (ValueError, sa.exc.ArgumentError) as exc:
        _cannot_open(url, exc)
    with closing(db):
        try:
            upgrade(db)
        except (OSError, sa.exc.DBAPIError) as exc:
            _cannot_open(url, exc)
        yield db
