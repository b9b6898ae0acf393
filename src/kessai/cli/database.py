"""Opening the database for one command, with a plain message when that cannot be done."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import NoReturn, TypeVar

import sqlalchemy as sa
import typer
from sqlalchemy.engine import Connection

from kessai import keys
from kessai.adapters.db import Database, normalise_url
from kessai.adapters.migrate import upgrade
from kessai.cli import output
from kessai.connectors.secrets import SecretKeyInvalid
from kessai.domain.errors import KessaiError

T = TypeVar("T")

# Exit status of a command that could not open or migrate its database (domain errors exit 2).
CANNOT_OPEN_EXIT: int = 1


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
    output.error(f"cannot open the database {shown_url(url)}: {reason}")
    raise typer.Exit(CANNOT_OPEN_EXIT) from exc


@contextmanager
def opened(url: str, *, check_key: bool = True) -> Iterator[Database]:
    """The database for one command, migrated to the newest schema.

    One that cannot be opened or migrated (an unsupported URL, a folder that does not exist, a
    server that refuses the connection, an unknown database or role) ends the command with one
    line on stderr, naming the database without its password, and exit status 1; so does a
    master key that is malformed or cannot unseal the database's key for customer codes.
    """
    try:
        db = Database(url)
    except (ValueError, sa.exc.ArgumentError) as exc:
        _cannot_open(url, exc)
    with closing(db):
        try:
            upgrade(db, check_key=check_key)
        except (OSError, sa.exc.DBAPIError) as exc:
            _cannot_open(url, exc)
        except (SecretKeyInvalid, keys.MissingKey) as exc:
            # The database's key for customer codes is sealed with master keys none of which
            # is configured, or the configured key is malformed.
            output.error(str(exc))
            raise typer.Exit(CANNOT_OPEN_EXIT) from exc
        yield db


def run_unit(url: str, fn: Callable[[Connection], T], as_json: bool) -> T:
    """Run one unit of work on the migrated database; a domain error is refused (exit 2)."""
    try:
        with opened(url) as db:
            return db.run_sync(fn)
    except KessaiError as exc:
        raise output.refused(exc, as_json) from exc
