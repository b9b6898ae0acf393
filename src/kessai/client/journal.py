"""The terminal's journal: a local SQLite file that outlives crashes of the register.

Every payment is written as an *intent* (transKey, amount, service, time) before its request
leaves the machine, marked SENT just before each attempt, and updated with the gateway's answer
(transId, serviceId, status, refunds, voucherNo) as it arrives. Refunds are journaled the same
way under their refundKey. The LOGIN session is kept here too, so that a register logs in once,
not once per start.

An entry whose outcome the terminal never learned stays *unresolved* (INTENT, SENT or PENDING)
until ``Terminal.recover()`` asks the gateway. Local statuses besides the gateway's own:

- ``INTENT``: journaled; no request has left yet.
- ``SENT``: a request may have left; the answer was not journaled.
- ``NOT_SENT``: final; recovery found the request never left (nothing was charged).
- ``NOT_RECEIVED``: final; the request may have left but the gateway never received it, as
  STATUS said long enough afterwards (``not_found_grace_s``) that it can no longer arrive.
- ``REJECTED``: final; the gateway refused the request with an error (nothing was charged).

The file is created owner-only (0600, in a 0700 directory): it holds the session token. SQLite
runs in WAL mode with ``synchronous=FULL``, so an intent the journal accepted is on disk before
the request is sent, even across a power cut.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from kessai.client.exceptions import IdempotencyConflict, JournalError
from kessai.client.models import Payment, PaymentKind, Session

INTENT: Final = "INTENT"
SENT: Final = "SENT"
NOT_SENT: Final = "NOT_SENT"
NOT_RECEIVED: Final = "NOT_RECEIVED"
REJECTED: Final = "REJECTED"
PENDING: Final = "PENDING"

# Entries (payments and refunds) whose outcome the terminal does not know yet.
UNRESOLVED_STATUSES: Final = frozenset({INTENT, SENT, PENDING})
LOCAL_FINAL_STATUSES: Final = frozenset({NOT_SENT, NOT_RECEIVED, REJECTED})

SCHEMA_VERSION: Final = 1
MAX_LIST_LIMIT: Final = 10_000
_BUSY_TIMEOUT_MS: Final = 10_000

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS session (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    base_url TEXT NOT NULL,
    mid TEXT NOT NULL,
    device_key TEXT NOT NULL,
    token TEXT NOT NULL,
    expires_at TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS payments (
    trans_key TEXT PRIMARY KEY,
    mid TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    service_id TEXT,
    code_masked TEXT,
    status TEXT NOT NULL,
    pending_reason TEXT,
    trans_id TEXT UNIQUE,
    failure_code TEXT,
    failure_message TEXT,
    error_code TEXT,
    error_message TEXT,
    refunded_amount INTEGER NOT NULL DEFAULT 0,
    voucher_no TEXT,
    qr_data TEXT,
    qr_expires_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    updated_at TEXT NOT NULL,
    resolved_at TEXT
);
CREATE INDEX IF NOT EXISTS payments_by_status ON payments (status);
CREATE INDEX IF NOT EXISTS payments_by_created ON payments (created_at);
CREATE TABLE IF NOT EXISTS refunds (
    refund_key TEXT PRIMARY KEY,
    mid TEXT NOT NULL,
    trans_id TEXT NOT NULL,
    amount INTEGER,
    status TEXT NOT NULL,
    refund_id TEXT,
    error_code TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    updated_at TEXT NOT NULL,
    resolved_at TEXT
);
CREATE INDEX IF NOT EXISTS refunds_by_trans_id ON refunds (trans_id);
"""


def _statements(script: str) -> tuple[str, ...]:
    """The statements of ``script``, cut where SQLite itself sees one end, not at every ";".

    ``executescript`` would run them in one call, but it commits any open transaction first, and
    the schema is written inside the one that holds the write lock.
    """
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    return tuple(statements)


_SCHEMA_STATEMENTS: Final = _statements(_SCHEMA)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _required_time(value: Any) -> datetime:
    parsed = _time(value)
    if parsed is None:
        raise JournalError("the journal has a row without its time")
    return parsed


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One payment as the journal knows it."""

    trans_key: str
    mid: str
    kind: PaymentKind
    amount: int
    service_id: str | None
    code_masked: str | None
    status: str
    pending_reason: str | None
    trans_id: str | None
    failure_code: str | None
    failure_message: str | None
    error_code: str | None
    error_message: str | None
    refunded_amount: int
    voucher_no: str | None
    qr_data: str | None
    qr_expires_at: datetime | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime
    resolved_at: datetime | None

    @property
    def is_resolved(self) -> bool:
        """True once the journal knows the outcome."""
        return self.status not in UNRESOLVED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The entry with the wire's field names, for JSON output."""
        return {
            "transKey": self.trans_key,
            "mid": self.mid,
            "kind": self.kind.value,
            "amount": self.amount,
            "serviceId": self.service_id,
            "codeMasked": self.code_masked,
            "status": self.status,
            "pendingReason": self.pending_reason,
            "transId": self.trans_id,
            "failureCode": self.failure_code,
            "failureMessage": self.failure_message,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
            "refundedAmount": self.refunded_amount,
            "voucherNo": self.voucher_no,
            "qrData": self.qr_data,
            "qrExpiresAt": _iso(self.qr_expires_at),
            "attempts": self.attempts,
            "createdAt": _iso(self.created_at),
            "sentAt": _iso(self.sent_at),
            "updatedAt": _iso(self.updated_at),
            "resolvedAt": _iso(self.resolved_at),
            "resolved": self.is_resolved,
        }


@dataclass(frozen=True, slots=True)
class JournalRefund:
    """One refund as the journal knows it."""

    refund_key: str
    mid: str
    trans_id: str
    amount: int | None  # None: "all that remains", until the gateway said how much
    status: str
    refund_id: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    updated_at: datetime
    resolved_at: datetime | None

    @property
    def is_resolved(self) -> bool:
        """True once the journal knows the outcome."""
        return self.status not in UNRESOLVED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        """The refund with the wire's field names, for JSON output."""
        return {
            "refundKey": self.refund_key,
            "mid": self.mid,
            "transId": self.trans_id,
            "amount": self.amount,
            "status": self.status,
            "refundId": self.refund_id,
            "errorCode": self.error_code,
            "errorMessage": self.error_message,
            "attempts": self.attempts,
            "createdAt": _iso(self.created_at),
            "sentAt": _iso(self.sent_at),
            "updatedAt": _iso(self.updated_at),
            "resolvedAt": _iso(self.resolved_at),
            "resolved": self.is_resolved,
        }


def _entry(row: sqlite3.Row) -> JournalEntry:
    return JournalEntry(
        trans_key=row["trans_key"],
        mid=row["mid"],
        kind=PaymentKind(row["kind"]),
        amount=row["amount"],
        service_id=row["service_id"],
        code_masked=row["code_masked"],
        status=row["status"],
        pending_reason=row["pending_reason"],
        trans_id=row["trans_id"],
        failure_code=row["failure_code"],
        failure_message=row["failure_message"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        refunded_amount=row["refunded_amount"],
        voucher_no=row["voucher_no"],
        qr_data=row["qr_data"],
        qr_expires_at=_time(row["qr_expires_at"]),
        attempts=row["attempts"],
        created_at=_required_time(row["created_at"]),
        sent_at=_time(row["sent_at"]),
        updated_at=_required_time(row["updated_at"]),
        resolved_at=_time(row["resolved_at"]),
    )


def _refund(row: sqlite3.Row) -> JournalRefund:
    return JournalRefund(
        refund_key=row["refund_key"],
        mid=row["mid"],
        trans_id=row["trans_id"],
        amount=row["amount"],
        status=row["status"],
        refund_id=row["refund_id"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        attempts=row["attempts"],
        created_at=_required_time(row["created_at"]),
        sent_at=_time(row["sent_at"]),
        updated_at=_required_time(row["updated_at"]),
        resolved_at=_time(row["resolved_at"]),
    )


def _create_private_file(path: Path) -> None:
    """Create the journal file owner-only, and tighten an existing one that is wider."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
        if mode & 0o077:
            os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)


# The first pause after a refused switch; it doubles up to the longest, until the deadline.
_FIRST_PAUSE_SECONDS: Final = 0.001
_LONGEST_PAUSE_SECONDS: Final = 0.05


def use_wal(connection: sqlite3.Connection, timeout_seconds: float) -> str:
    """Switch the connection's database to WAL mode; answers the journal mode now in force.

    A new file starts in rollback-journal mode, and leaving it takes an exclusive lock. When
    several connections open a new file at once, SQLite refuses the switch at once with "database
    is locked" instead of waiting on ``busy_timeout``, since waiting could deadlock: each holds a
    shared lock that the others need released. Whoever switches first writes the mode into the
    file, and for everyone else the statement then only reports it; so a refused switch is tried
    again after a short pause, until ``timeout_seconds`` have passed. A database in memory answers
    ``memory``, which stays as it is.
    """
    deadline = time.monotonic() + timeout_seconds
    pause = _FIRST_PAUSE_SECONDS
    while True:
        try:
            row = connection.execute("PRAGMA journal_mode=WAL").fetchone()
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)
            busy = code is not None and code & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_PAUSE_SECONDS)
            continue
        return str(row[0])


class Journal:
    """The local journal of one terminal (thread-safe; one SQLite connection)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.RLock()
        try:
            _create_private_file(self.path)
            # Autocommit mode: every statement commits on its own unless _write() opens a
            # transaction, so nothing stays uncommitted by accident.
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # Several processes may open a new journal at once; the switch waits its turn.
            use_wal(self._db, _BUSY_TIMEOUT_MS / 1000)
            # FULL: an intent the journal accepted survives a power cut before the send.
            self._db.execute("PRAGMA synchronous = FULL")
            # The schema is checked and created under the write lock, taken first: two processes
            # opening a new journal at once then take turns on busy_timeout. Read first and written
            # after, one of them would fail at once on a read the other's CREATE made stale.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise JournalError(
                        f"the journal {self.path} was written by a newer kessai (schema {version})"
                    )
                if version < SCHEMA_VERSION:
                    for statement in _SCHEMA_STATEMENTS:
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from exc

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(f"cannot write the journal {self.path}: {exc}") from exc

    def _read(self, sql: str, parameters: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, parameters).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read the journal {self.path}: {exc}") from exc

    # -- the session ----------------------------------------------------------------------------

    def load_session(self, base_url: str, mid: str, device_key: str) -> Session | None:
        """The kept session of this gateway, mid and device, if any."""
        rows = self._read(
            "SELECT token, expires_at FROM session WHERE base_url = ? AND mid = ? "
            "AND device_key = ?",
            (base_url, mid, device_key),
        )
        if not rows:
            return None
        return Session(rows[0]["token"], _time(rows[0]["expires_at"]))

    def save_session(self, base_url: str, mid: str, device_key: str, session: Session) -> None:
        """Keep a new session (the journal holds one: a terminal has one live session)."""
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO session (id, base_url, mid, device_key, token, expires_at, "
                "created_at) VALUES (1, ?, ?, ?, ?, ?, ?)",
                (base_url, mid, device_key, session.token, _iso(session.expires_at), _iso(_now())),
            )

    def clear_session(self, token: str | None = None) -> None:
        """Forget the session (only if it is still ``token``, when given)."""
        with self._write() as db:
            if token is None:
                db.execute("DELETE FROM session")
            else:
                db.execute("DELETE FROM session WHERE token = ?", (token,))

    # -- payments -------------------------------------------------------------------------------

    def record_intent(
        self,
        *,
        trans_key: str,
        mid: str,
        kind: PaymentKind,
        amount: int,
        service_id: str | None,
        code_masked: str | None,
    ) -> JournalEntry:
        """Write a payment's intent before its request leaves; answers the entry.

        The same transKey again (a retry of the same payment) keeps its entry; with another
        amount or kind it is refused, as the gateway would refuse it.
        """
        now = _iso(_now())
        with self._write() as db:
            row = db.execute("SELECT * FROM payments WHERE trans_key = ?", (trans_key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO payments (trans_key, mid, kind, amount, service_id, code_masked, "
                    "status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (trans_key, mid, kind.value, amount, service_id, code_masked, INTENT, now, now),
                )
            elif row["amount"] != amount or row["kind"] != kind.value:
                raise IdempotencyConflict(
                    f"transKey {trans_key} is journaled for another payment "
                    f"({row['kind']}, {row['amount']} yen)",
                    code="IDEMPOTENCY_CONFLICT",
                    status_code=409,
                    field="transKey",
                )
            elif row["status"] in (NOT_SENT, REJECTED):
                # Nothing reached the gateway (or it refused and changed nothing): a new try
                # starts from the intent again.
                db.execute(
                    "UPDATE payments SET status = ?, error_code = NULL, error_message = NULL, "
                    "resolved_at = NULL, code_masked = COALESCE(?, code_masked), updated_at = ? "
                    "WHERE trans_key = ?",
                    (INTENT, code_masked, now, trans_key),
                )
            found = db.execute("SELECT * FROM payments WHERE trans_key = ?", (trans_key,))
            return _entry(found.fetchone())

    def mark_sent(self, trans_key: str) -> None:
        """Record, before the bytes leave, that a request for this payment may be sent."""
        now = _iso(_now())
        with self._write() as db:
            db.execute(
                "UPDATE payments SET attempts = attempts + 1, sent_at = ?, updated_at = ?, "
                "status = CASE WHEN status IN (?, ?, ?) THEN ? ELSE status END "
                "WHERE trans_key = ?",
                (now, now, INTENT, NOT_SENT, NOT_RECEIVED, SENT, trans_key),
            )

    def mark_unsent(
        self,
        trans_key: str,
        status: str,
        code: str | None = None,
        message: str | None = None,
        *,
        if_status: str | None = None,
        if_attempts: int | None = None,
    ) -> bool:
        """Resolve a payment that never reached the gateway (NOT_SENT, NOT_RECEIVED, REJECTED).

        Only an entry still INTENT or SENT changes. With ``if_status`` (and ``if_attempts``) it
        changes only while it is still as the caller read it: recovery in another process must
        not undo a "may be sent" mark written meanwhile. Tells whether the entry changed.
        """
        return self._mark_unsent(
            "payments", "trans_key", trans_key, status, code, message, if_status, if_attempts
        )

    def _mark_unsent(
        self,
        table: str,
        key_column: str,
        key: str,
        status: str,
        code: str | None,
        message: str | None,
        if_status: str | None,
        if_attempts: int | None,
    ) -> bool:
        if status not in LOCAL_FINAL_STATUSES:
            raise ValueError(f"not a local final status: {status}")
        if if_status is not None and if_status not in (INTENT, SENT):
            return False
        now = _iso(_now())
        # Only an entry whose outcome is unknown may end this way; a payment the gateway
        # reported keeps the gateway's word.
        clauses = ["status IN (?, ?)"] if if_status is None else ["status = ?"]
        parameters: list[Any] = [INTENT, SENT] if if_status is None else [if_status]
        if if_attempts is not None:
            clauses.append("attempts = ?")
            parameters.append(if_attempts)
        with self._write() as db:
            cursor = db.execute(
                f"UPDATE {table} SET status = ?, error_code = ?, error_message = ?, "  # noqa: S608
                f"updated_at = ?, resolved_at = ? WHERE {key_column} = ? AND "
                + " AND ".join(clauses),
                (status, code, message, now, now, key, *parameters),
            )
            return cursor.rowcount > 0

    def record_payment(self, payment: Payment) -> bool:
        """Write what the gateway said about a payment; tells whether the journal has it.

        Updates the entry of the same transKey (this terminal's payments only) and the refunds
        the journal knows by refundKey.
        """
        now = _iso(_now())
        with self._write() as db:
            cursor = db.execute(
                "UPDATE payments SET trans_id = ?, service_id = ?, status = ?, "
                "pending_reason = ?, failure_code = ?, failure_message = ?, error_code = NULL, "
                "error_message = NULL, refunded_amount = ?, voucher_no = ?, "
                "qr_data = COALESCE(?, qr_data), qr_expires_at = COALESCE(?, qr_expires_at), "
                "code_masked = COALESCE(code_masked, ?), updated_at = ?, "
                "resolved_at = CASE WHEN ? THEN COALESCE(resolved_at, ?) END "
                "WHERE trans_key = ?",
                (
                    payment.trans_id,
                    payment.service_id,
                    payment.status.value,
                    payment.pending_reason.value if payment.pending_reason else None,
                    payment.failure_code,
                    payment.failure_message,
                    payment.refunded_amount,
                    payment.voucher_no,
                    payment.qr_data,
                    _iso(payment.qr_expires_at),
                    payment.code_masked,
                    now,
                    payment.is_final,
                    now,
                    payment.trans_key,
                ),
            )
            known = cursor.rowcount > 0
            for refund in payment.refunds:
                done = refund.status.value != PENDING
                db.execute(
                    "UPDATE refunds SET amount = ?, status = ?, refund_id = ?, error_code = NULL, "
                    "error_message = NULL, updated_at = ?, "
                    "resolved_at = CASE WHEN ? THEN COALESCE(resolved_at, ?) END "
                    "WHERE refund_key = ? AND trans_id = ?",
                    (
                        refund.amount,
                        refund.status.value,
                        refund.refund_id,
                        now,
                        done,
                        now,
                        refund.refund_key,
                        payment.trans_id,
                    ),
                )
        return known

    def entry(self, trans_key: str) -> JournalEntry | None:
        """The payment journaled under ``trans_key``."""
        rows = self._read("SELECT * FROM payments WHERE trans_key = ?", (trans_key,))
        return _entry(rows[0]) if rows else None

    def entry_by_trans_id(self, trans_id: str) -> JournalEntry | None:
        """The journaled payment the gateway numbered ``trans_id``."""
        rows = self._read("SELECT * FROM payments WHERE trans_id = ?", (trans_id,))
        return _entry(rows[0]) if rows else None

    def entries(
        self,
        *,
        status: str | None = None,
        unresolved: bool = False,
        kind: PaymentKind | None = None,
        since: datetime | None = None,
        mid: str | None = None,
        limit: int = 100,
    ) -> list[JournalEntry]:
        """Journaled payments, newest first, filtered."""
        clauses: list[str] = []
        parameters: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            parameters.append(status.upper())
        if unresolved:
            clauses.append(f"status IN ({', '.join('?' * len(UNRESOLVED_STATUSES))})")
            parameters.extend(sorted(UNRESOLVED_STATUSES))
        if kind is not None:
            clauses.append("kind = ?")
            parameters.append(kind.value)
        if since is not None:
            clauses.append("created_at >= ?")
            parameters.append(_iso(since))
        if mid is not None:
            clauses.append("mid = ?")
            parameters.append(mid)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        bounded = max(1, min(limit, MAX_LIST_LIMIT))
        rows = self._read(
            f"SELECT * FROM payments {where} ORDER BY created_at DESC, trans_key DESC LIMIT ?",  # noqa: S608
            (*parameters, bounded),
        )
        return [_entry(row) for row in rows]

    # -- refunds --------------------------------------------------------------------------------

    def record_refund_intent(
        self, *, refund_key: str, mid: str, trans_id: str, amount: int | None
    ) -> JournalRefund:
        """Write a refund's intent before its request leaves."""
        now = _iso(_now())
        with self._write() as db:
            row = db.execute("SELECT * FROM refunds WHERE refund_key = ?", (refund_key,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO refunds (refund_key, mid, trans_id, amount, status, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (refund_key, mid, trans_id, amount, INTENT, now, now),
                )
            elif row["trans_id"] != trans_id or (amount is not None and row["amount"] != amount):
                raise IdempotencyConflict(
                    f"refundKey {refund_key} is journaled for another refund",
                    code="IDEMPOTENCY_CONFLICT",
                    status_code=409,
                    field="refundKey",
                )
            elif row["status"] in (NOT_SENT, REJECTED):
                db.execute(
                    "UPDATE refunds SET status = ?, error_code = NULL, error_message = NULL, "
                    "resolved_at = NULL, updated_at = ? WHERE refund_key = ?",
                    (INTENT, now, refund_key),
                )
            found = db.execute("SELECT * FROM refunds WHERE refund_key = ?", (refund_key,))
            return _refund(found.fetchone())

    def mark_refund_sent(self, refund_key: str) -> None:
        """Record, before the bytes leave, that a refund request may be sent."""
        now = _iso(_now())
        with self._write() as db:
            db.execute(
                "UPDATE refunds SET attempts = attempts + 1, sent_at = ?, updated_at = ?, "
                "status = CASE WHEN status IN (?, ?, ?) THEN ? ELSE status END "
                "WHERE refund_key = ?",
                (now, now, INTENT, NOT_SENT, NOT_RECEIVED, SENT, refund_key),
            )

    def mark_refund_unsent(
        self,
        refund_key: str,
        status: str,
        code: str | None = None,
        message: str | None = None,
        *,
        if_status: str | None = None,
        if_attempts: int | None = None,
    ) -> bool:
        """Resolve a refund that never reached the gateway (NOT_SENT, NOT_RECEIVED, REJECTED).

        ``if_status`` and ``if_attempts`` as for ``mark_unsent``; tells whether it changed.
        """
        return self._mark_unsent(
            "refunds", "refund_key", refund_key, status, code, message, if_status, if_attempts
        )

    def refund(self, refund_key: str) -> JournalRefund | None:
        """The refund journaled under ``refund_key``."""
        rows = self._read("SELECT * FROM refunds WHERE refund_key = ?", (refund_key,))
        return _refund(rows[0]) if rows else None

    def refunds(
        self,
        *,
        trans_id: str | None = None,
        unresolved: bool = False,
        mid: str | None = None,
        limit: int = 100,
    ) -> list[JournalRefund]:
        """Journaled refunds, newest first, filtered."""
        clauses: list[str] = []
        parameters: list[Any] = []
        if trans_id is not None:
            clauses.append("trans_id = ?")
            parameters.append(trans_id)
        if unresolved:
            clauses.append(f"status IN ({', '.join('?' * len(UNRESOLVED_STATUSES))})")
            parameters.extend(sorted(UNRESOLVED_STATUSES))
        if mid is not None:
            clauses.append("mid = ?")
            parameters.append(mid)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        bounded = max(1, min(limit, MAX_LIST_LIMIT))
        rows = self._read(
            f"SELECT * FROM refunds {where} ORDER BY created_at DESC, refund_key DESC LIMIT ?",  # noqa: S608
            (*parameters, bounded),
        )
        return [_refund(row) for row in rows]


def sent_long_ago(sent_at: datetime | None, grace_s: float, now: datetime | None = None) -> bool:
    """True when a request sent at ``sent_at`` can no longer be on its way to the gateway."""
    if sent_at is None:
        return True
    return (now or _now()) - sent_at >= timedelta(seconds=grace_s)
