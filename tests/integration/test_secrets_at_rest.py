"""Customer codes, passwords, passCodes and session tokens never reach the database in clear.

Every table is dumped as text and searched; so are the raw bytes of the database file and its
write-ahead log, and the log records written meanwhile.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from kessai.domain.errors import Unauthenticated
from kessai.domain.identify import generate_code
from kessai.security import mask_code, token_hash, verify_secret

if TYPE_CHECKING:
    from conftest import Harness

QR_TTL_SECONDS = 30


def dump(h: Harness) -> list[tuple[str, str, str]]:
    """(table, column, text) for every non-null cell of every table in the database file."""

    def unit(conn: sa.Connection) -> list[tuple[str, str, str]]:
        names = conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
        ).scalars()
        cells = []
        for name in list(names):
            result = conn.exec_driver_sql(f'SELECT * FROM "{name}"')
            columns = list(result.keys())
            for row in result:
                for column, value in zip(columns, row, strict=True):
                    if value is not None:
                        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                        cells.append((name, column, text))
        return cells

    return h.db.run_sync(unit, write=False)


def database_files(h: Harness) -> list[Path]:
    path = Path(h.url.removeprefix("sqlite:///"))
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists()]


def busy_day(h: Harness) -> None:
    """A day of business touching every place a secret could leak into."""
    till = h.till(h.provision(passcode="4821"))
    paid = till.request(1500)
    till.refund(paid.trans_id, 500)
    till.request(800, outcome="declined")
    till.request(900, outcome="error")
    reused = h.codes()[0]
    till.request(100, code=reused)
    till.request(100, code=reused)  # a reused code is declined, and must not be kept either
    waiting = till.request(700, outcome="password")
    h.settle(waiting.trans_id, approve=True)
    till.request(300, outcome="timeout-success")
    h.codes("21", "success", 5)  # issued, never used
    # A code that the sandbox never issued (an unknown code is still a secret).
    stranger = generate_code("01", random.Random(99))
    h.secrets.add(stranger)
    till.request(200, code=stranger)
    qr = till.qr(400, ttl_seconds=QR_TTL_SECONDS)
    h.settle(qr.trans_id, approve=True)
    h.clock.advance(5)
    till.paycheck(qr.trans_id)
    # Wrong credentials are secrets too (they may be a real one mistyped).
    with pytest.raises(Unauthenticated):
        h.login(till.shop, key="AA:BB:CC:DD:EE:01", password="Typo12345678")
    h.secrets.add("Typo12345678")
    till.logout()
    second = h.login(till.shop)
    assert second


def test_no_secret_is_stored_in_clear(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    busy_day(h)
    long_secrets = {s for s in h.secrets if len(s) > 4}
    passcodes = {s for s in h.secrets if len(s) == 4}
    assert passcodes == {"4821"}
    assert len(long_secrets) >= 15

    cells = dump(h)
    assert cells, "the dump is empty: the test would prove nothing"
    for table, column, text in cells:
        for secret in long_secrets:
            assert secret not in text, f"a secret is stored in clear in {table}.{column}"
        # A 4-digit passCode could occur by chance inside longer text; it must not be a value.
        assert text not in passcodes, f"a passCode is stored in clear in {table}.{column}"

    for path in database_files(h):
        raw = path.read_bytes()
        for secret in long_secrets:
            assert secret.encode() not in raw, f"a secret is in the bytes of {path.name}"

    for record in caplog.records:
        message = record.getMessage()
        for secret in long_secrets:
            assert secret not in message, f"a secret is in the log: {record.name}"


def test_what_is_kept_instead_of_the_secrets(h: Harness) -> None:
    till = h.till(h.provision(passcode="4821"))
    code = h.codes()[0]
    paid = till.request(1500, code=code)
    row = h.payment_row(paid.trans_id)
    assert row["code_masked"] == mask_code(code)
    assert sum(1 for c in row["code_masked"] if c != "*") <= 6

    (terminal,) = h.table("terminals")
    assert terminal["password_hash"].startswith("$argon2id$")
    assert terminal["passcode_hash"].startswith("$argon2id$")
    assert verify_secret(terminal["password_hash"], till.shop.terminal.password)
    assert verify_secret(terminal["passcode_hash"], "4821")

    (session,) = h.table("sessions")
    assert session["token_hash"] == token_hash(till.token)

    created = h.audit(paid.trans_id)[0]
    assert mask_code(code) in created["detail"]
    assert code not in created["detail"]
