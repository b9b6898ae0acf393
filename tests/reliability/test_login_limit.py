"""The per-address login limit's arithmetic, on a real database with the clock in our hands.

The attack tests (test_attack_guessing.py) prove the limit over HTTP; these pin down exactly
how allowance is spent, refused, given back, refilled and pruned, which real time cannot.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.config import Settings
from kessai.domain.errors import InvalidRequest, RateLimited, Unauthenticated
from kessai.service import ratelimit
from kessai.service.ratelimit import AddressLimit, client_address, give_back, prune, take

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
LIMIT = AddressLimit(max_failures=4, window=timedelta(seconds=60))  # one back every 15 s
ADDRESS = "203.0.113.7"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'k.db'}")
    upgrade(database)
    yield database
    database.close()


def _take(db: Database, at: datetime, address: str = ADDRESS) -> int | None:
    return db.run_sync(lambda conn: take(conn, address, at, LIMIT)).wait_seconds


def _spent_until(db: Database, address: str = ADDRESS) -> datetime | None:
    return db.run_sync(
        lambda conn: conn.execute(
            sa.select(t.login_throttle.c.spent_until).where(t.login_throttle.c.address == address)
        ).scalar_one_or_none(),
        write=False,
    )


@pytest.mark.parametrize(
    ("peer", "counted_as"),
    [
        (("198.51.100.7", 50000), "198.51.100.7"),
        (("::ffff:198.51.100.7", 1), "198.51.100.7"),
        (("2001:db8:1:2:3:4:5:6", 1), "2001:db8:1:2::/64"),
        (("2001:db8:1:2::ffff", 1), "2001:db8:1:2::/64"),
        (("fe80::1%eth0", 1), "fe80::/64"),
        (("not-an-ip", 1), "not-an-ip"),
        (("x" * 300, 1), "x" * 64),
        (None, "unknown"),
        (("", 0), "unknown"),
    ],
)
def test_the_address_a_login_counts_against(peer: tuple[str, int] | None, counted_as: str) -> None:
    assert client_address({"client": peer}) == counted_as


def test_a_burst_of_max_attempts_then_one_per_step(db: Database) -> None:
    for _ in range(LIMIT.max_failures):
        assert _take(db, T0) is None
    assert _take(db, T0) == 15  # the next attempt comes back after window/max
    assert _take(db, T0 + timedelta(seconds=14)) == 1
    # One step later exactly one attempt is back, not more.
    assert _take(db, T0 + timedelta(seconds=15)) is None
    assert _take(db, T0 + timedelta(seconds=15)) == 15
    # A refused attempt costs nothing: refusing for an hour does not push the allowance back.
    for second in range(16, 29):
        assert _take(db, T0 + timedelta(seconds=second)) is not None
    assert _take(db, T0 + timedelta(seconds=30)) is None
    # After a whole window of quiet, the whole allowance is back, and no more than that.
    later = T0 + timedelta(seconds=30 + 60)
    assert [_take(db, later) for _ in range(LIMIT.max_failures + 1)] == [None] * 4 + [15]


def test_addresses_do_not_share_allowance(db: Database) -> None:
    for _ in range(LIMIT.max_failures):
        assert _take(db, T0) is None
    assert _take(db, T0) is not None
    assert _take(db, T0, "203.0.113.8") is None


def test_an_attempt_given_back_is_as_if_never_taken(db: Database) -> None:
    for _ in range(100):  # a hundred successful logins from one address
        assert _take(db, T0) is None
        db.run_sync(lambda conn: give_back(conn, ADDRESS, LIMIT))
    assert [_take(db, T0) for _ in range(LIMIT.max_failures + 1)] == [None] * 4 + [15]
    db.run_sync(lambda conn: give_back(conn, "198.51.100.99", LIMIT))  # no row: nothing to do


def test_prune_deletes_only_allowances_that_are_whole_again(db: Database) -> None:
    assert _take(db, T0, "192.0.2.1") is None  # spent until T0 + 15 s
    for _ in range(3):
        assert _take(db, T0, "192.0.2.2") is None  # spent until T0 + 45 s
    pruned = db.run_sync(lambda conn: prune(conn, T0 + timedelta(seconds=20), 100))
    assert pruned == 1
    assert _spent_until(db, "192.0.2.1") is None
    assert _spent_until(db, "192.0.2.2") == T0 + timedelta(seconds=45)


def _settings(max_failures: int) -> Settings:
    return Settings(login_address_max_failures=max_failures, login_address_window_seconds=60)


async def _login(db: Database, settings: Settings, error: Exception | None) -> None:
    scope = {"client": (ADDRESS, 1)}
    async with ratelimit.login_attempt(db, settings, scope, T0):
        if error is not None:
            raise error


def _outcome(db: Database, settings: Settings, error: Exception | None) -> str:
    try:
        asyncio.run(_login(db, settings, error))
    except Exception as exc:
        if exc is error:  # the login's own answer, passed through unchanged
            return "passed"
        assert isinstance(exc, RateLimited), exc
        answer = (exc.code, exc.http_status, exc.retry_after_seconds)
        assert answer == ("TOO_MANY_ATTEMPTS", 429, 15)
        return "limited"
    return "passed"


def test_only_guesses_keep_their_attempt(db: Database) -> None:
    settings = _settings(4)
    not_guesses: list[Exception | None] = [
        None,  # a successful login
        InvalidRequest("bad mid", field="mid"),
        RateLimited("locked", code="LOGIN_LOCKED"),
        Unauthenticated("no session", code="SESSION_INVALID"),
        RuntimeError("a bug"),
    ]
    for _ in range(5):
        for error in not_guesses:
            assert _outcome(db, settings, error) == "passed"
    guesses = [
        Unauthenticated("wrong", code="WRONG_CREDENTIALS"),
        Unauthenticated("no such os", code="UNKNOWN_OS"),
    ]
    outcomes = [_outcome(db, settings, guesses[n % 2]) for n in range(6)]
    assert outcomes == ["passed"] * 4 + ["limited"] * 2
    # While limited, even a login that would succeed is refused before it runs.
    assert _outcome(db, settings, None) == "limited"


def test_a_limit_of_zero_turns_it_off(db: Database) -> None:
    settings = _settings(0)
    wrong = Unauthenticated("wrong", code="WRONG_CREDENTIALS")
    assert all(_outcome(db, settings, wrong) == "passed" for _ in range(50))
    assert _spent_until(db) is None


def test_the_worker_prunes_allowances_that_are_whole_again(db: Database, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    assert _take(db, now - timedelta(hours=2), "192.0.2.10") is None  # whole again long since
    assert _take(db, now + timedelta(hours=2), "192.0.2.11") is None  # still spent
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("kessai")),
            "worker",
            "--once",
            "--json",
            "--database",
            db.url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["errors"] == []
    assert (report["webhooksAttempted"], report["webhooksDelivered"]) == (0, 0)
    assert _spent_until(db, "192.0.2.10") is None
    assert _spent_until(db, "192.0.2.11") is not None
