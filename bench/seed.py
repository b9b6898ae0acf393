"""Stored payments in bulk, for measuring how reads behave as the books grow.

Paying a million times through the API would take longer than the bench, so the rows are written
with SQL — but they are copies of real rows. The gateway first makes some payments over HTTP (one
per terminal); ``seed_payments`` then copies, for each new payment, everything one of those real
payments wrote: its ``payments`` row, its audit entries and any other row that names it by
``payment_id``, the sandbox wallet's charge, and a used one-time code. Only the columns that must
be unique change: the payment id, the transId (10 digits, scattered as real ones are), the
transKey, the code's hash. Every other column, including ones added after this was written, is
copied as the gateway wrote it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# transIds of seeded payments: "0" and a scrambled 9-digit number. The gateway never issues a
# transId starting with 0, and n × 3^18 mod 10^9 is a bijection (3^18 is prime to 10), so the
# seeded ones are unique and spread over the index like random ones.
_SCRAMBLE: Final = 387_420_489
_TRANS_ID_SQL: Final = f"'0' || printf('%09d', (seq.n * {_SCRAMBLE}) % 1000000000)"
_BATCH: Final = 200_000


def seeded_trans_id(n: int) -> str:
    """The transId of seeded payment number ``n`` (as the SQL above makes it)."""
    return f"0{(n * _SCRAMBLE) % 1_000_000_000:09d}"


@dataclass(frozen=True)
class Template:
    """A real payment to copy: its row id and transId in the source database."""

    payment_id: int
    trans_id: str


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, bool]]:
    """(name, is the integer primary key) of each column of a main-database table."""
    rows = conn.execute(f"PRAGMA main.table_info({table})").fetchall()
    return [(str(r[1]), bool(r[5]) and str(r[2]).upper() == "INTEGER") for r in rows]


def _unique_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """Columns that alone carry a UNIQUE index or constraint."""
    unique = set()
    for index in conn.execute(f"PRAGMA main.index_list({table})").fetchall():
        if not index[2]:
            continue
        columns = conn.execute(f"PRAGMA main.index_info({index[1]})").fetchall()
        if len(columns) == 1:
            unique.add(str(columns[0][2]))
    return unique


def _dependents(conn: sqlite3.Connection) -> list[str]:
    """Tables (other than payments) whose rows name a payment by ``payment_id``."""
    tables = [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return [
        table
        for table in tables
        if table != "payments" and any(c == "payment_id" for c, _ in _columns(conn, table))
    ]


def seed_payments(
    target: Path, source: Path, templates: Sequence[Template], count: int
) -> dict[str, int]:
    """Add ``count`` payments to ``target``, payment n a copy of ``templates[n % len]``.

    ``target`` must have the same merchants and terminals as ``source`` (a copy of the database
    ``source`` was made from, before its payments). Answers the rows written per table.
    """
    if not templates:
        raise ValueError("no template payments to copy")
    conn = sqlite3.connect(target, isolation_level=None)
    written: dict[str, int] = {}
    try:
        # Setting up the books, not measuring: no journal, no fsync, a big page cache. The
        # database goes back to WAL at the end, as the gateway keeps it.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-400000")
        conn.execute("ATTACH DATABASE ? AS src", (f"file:{source}?mode=ro",))
        conn.execute("CREATE TEMP TABLE tpl (k INTEGER PRIMARY KEY, pid INTEGER, trans_id TEXT)")
        conn.executemany(
            "INSERT INTO temp.tpl VALUES (?, ?, ?)",
            [(k, t.payment_id, t.trans_id) for k, t in enumerate(templates)],
        )
        base = int(conn.execute("SELECT coalesce(max(id), 0) + 1 FROM main.payments").fetchone()[0])
        statements = _statements(conn, len(templates))
        for low in range(0, count, _BATCH):
            high = min(count, low + _BATCH)
            conn.execute("BEGIN")
            for table, sql in statements:
                # (cursor.rowcount stays -1 for statements that start with WITH.)
                before = conn.total_changes
                conn.execute(sql, {"low": low, "high": high, "base": base})
                written[table] = written.get(table, 0) + conn.total_changes - before
            conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()
    return written


def _references(conn: sqlite3.Connection, table: str, templates: int) -> bool:
    """Whether any template payment has rows in ``table`` (most dependents have none)."""
    row = conn.execute(
        f"SELECT 1 FROM src.{table} WHERE payment_id IN (SELECT pid FROM temp.tpl) LIMIT 1"
    ).fetchone()
    return row is not None


def _statements(conn: sqlite3.Connection, templates: int) -> list[tuple[str, str]]:
    seq = (
        "WITH RECURSIVE seq(n) AS (SELECT :low UNION ALL SELECT n + 1 FROM seq WHERE n < :high - 1)"
    )
    pick = f"seq JOIN temp.tpl AS tpl ON tpl.k = seq.n % {templates}"
    out = []

    def insert(
        table: str, alias: str, overrides: dict[str, str], source: str, order: str = "seq.n"
    ) -> None:
        names, values = [], []
        for name, integer_key in _columns(conn, table):
            if name in overrides:
                names.append(name)
                values.append(overrides[name])
            elif not integer_key:  # a new row id is the database's to give
                names.append(name)
                values.append(f"{alias}.{name}")
        sql = (
            f"{seq} INSERT INTO main.{table} ({', '.join(names)}) "
            f"SELECT {', '.join(values)} FROM {source} ORDER BY {order}"
        )
        out.append((table, sql))

    insert(
        "payments",
        "p",
        {"id": ":base + seq.n", "trans_id": _TRANS_ID_SQL, "trans_key": "'G' || seq.n"},
        f"{pick} JOIN src.payments AS p ON p.id = tpl.pid",
        order=_TRANS_ID_SQL,
    )
    for table in _dependents(conn):
        if not _references(conn, table, templates):
            continue
        overrides = {"payment_id": ":base + seq.n"}
        for name in _unique_columns(conn, table) - {"payment_id"}:
            overrides[name] = "'g' || seq.n || 'x' || d.rowid"
        insert(table, "d", overrides, f"{pick} JOIN src.{table} AS d ON d.payment_id = tpl.pid")
    # The wallet's side: its charge (named by transId) and the one-time code that paid.
    insert(
        "sandbox_charges",
        "c",
        {"ref": _TRANS_ID_SQL},
        f"{pick} JOIN src.sandbox_charges AS c ON c.ref = tpl.trans_id",
        order=_TRANS_ID_SQL,
    )
    # Used codes only fill the sandbox's table (PAYCHECK never reads it): ordered hashes keep
    # the million inserts cheap.
    insert(
        "sandbox_codes",
        "c",
        {"code_hash": "printf('%064x', seq.n)"},
        "seq JOIN (SELECT * FROM src.sandbox_codes WHERE used_at IS NOT NULL LIMIT 1) AS c",
    )
    return out
