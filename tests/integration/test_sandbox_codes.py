"""Sandbox codes are unique even where a format has few random digits."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from kessai.adapters.db import Database
from kessai.connectors.sandbox import wallets
from kessai.domain.errors import InvalidRequest

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _draws(codes: list[str]) -> Iterator[str]:
    while True:
        yield from codes


def test_a_code_already_issued_or_drawn_twice_is_drawn_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wallets, "generate_code", lambda *_: "9000010000000001")
    first = db.run_sync(lambda conn: wallets.issue_codes(conn, "04", "success", 1, NOW))
    assert first == ["9000010000000001"]
    # The one already issued, a repeat within the batch, then new ones.
    repeats = ["9000010000000001", "9000010000000001", "9000010000000002"] * 2
    draws = _draws([*repeats, "9000010000000003"])
    monkeypatch.setattr(wallets, "generate_code", lambda *_: next(draws))
    second = db.run_sync(lambda conn: wallets.issue_codes(conn, "04", "success", 2, NOW))
    assert sorted(second) == ["9000010000000002", "9000010000000003"]


def test_a_spent_format_is_refused_clearly(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wallets, "generate_code", lambda *_: "9000010000000001")
    db.run_sync(lambda conn: wallets.issue_codes(conn, "04", "success", 1, NOW))
    with pytest.raises(InvalidRequest, match="nearly spent"):
        db.run_sync(lambda conn: wallets.issue_codes(conn, "04", "success", 1, NOW))
