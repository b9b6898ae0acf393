"""A new payment's keyed hashes and first transId are made before its unit, outside the lock.

The unit runs on the writer thread while it holds the lock every process waits for; what needs no
database (HMACs of the request and the customer's code, a random transId) is made beforehand on
the caller's side. These tests pin down where that work happens and that the shortcut can never
change an answer: hashes made with a key the database does not have are not used, and a transId
drawn ahead that turns out to be taken is drawn again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from kessai.adapters import repository as repo
from kessai.domain.errors import Conflict
from kessai.domain.model import PaymentStatus
from kessai.security import keyed_hash
from kessai.service import gateway as gateway_module

if TYPE_CHECKING:
    from conftest import Harness

S = PaymentStatus
WRITER_THREAD = "kessai-db"


def _code_key(h: Harness) -> str:
    return h.db.run_sync(repo.code_key, write=False)


def _spy_on_keyed_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the thread of every keyed hash the gateway and the sandbox make."""
    threads: list[str] = []

    def spy(original: Callable[[str, str], str]) -> Callable[[str, str], str]:
        def recorded(key: str, value: str) -> str:
            threads.append(threading.current_thread().name)
            return original(key, value)

        return recorded

    from kessai.connectors.sandbox import wallets  # noqa: PLC0415

    monkeypatch.setattr(gateway_module, "keyed_hash", spy(gateway_module.keyed_hash))
    monkeypatch.setattr(wallets, "keyed_hash", spy(wallets.keyed_hash))
    return threads


def test_once_the_key_is_known_a_payments_unit_makes_no_keyed_hash(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    till = h.till()
    threads = _spy_on_keyed_hashes(monkeypatch)
    first = till.request(1000)
    assert first.status is S.COMPLETED
    # The first payment of the process learns the key inside its unit.
    assert WRITER_THREAD in threads

    code = h.codes()[0]  # issuing it hashes it too, on the writer thread
    threads.clear()
    second = till.request(1200, code=code)
    assert second.status is S.COMPLETED
    # The request's hash and the code's, both made by the caller, none under the lock.
    assert len(threads) == 2 and WRITER_THREAD not in threads, threads
    stored = h.payment_row(second.trans_id)
    fingerprint = f"CUSTOMER_CODE|1200|01|{code}"
    assert stored["request_hash"] == keyed_hash(_code_key(h), fingerprint)
    # The sandbox spent exactly that code.
    spent = [row for row in h.table("sandbox_codes") if row["used_at"] is not None]
    assert keyed_hash(_code_key(h), code) in {row["code_hash"] for row in spent}


def test_hashes_made_with_another_key_are_not_used(h: Harness) -> None:
    till = h.till()
    till.request(1000)  # the gateway learns the real key
    # As if the key the gateway holds were not the database's: what it makes ahead is wrong.
    h.gateway._code_key = "a-key-this-database-does-not-have"
    code = h.codes()[0]
    key = till.new_key()
    paid = till.request(1500, code=code, trans_key=key)
    # Had the code's hash made ahead been used, the sandbox would not know the code.
    assert paid.status is S.COMPLETED
    fingerprint = f"CUSTOMER_CODE|1500|01|{code}"
    assert h.payment_row(paid.trans_id)["request_hash"] == keyed_hash(_code_key(h), fingerprint)
    # The unit put the real key back: the retry is recognised, a changed retry refused.
    assert h.gateway._code_key == _code_key(h)
    assert till.request(1500, code=code, trans_key=key).trans_id == paid.trans_id
    with pytest.raises(Conflict):
        till.request(1600, code=code, trans_key=key)


def test_a_trans_id_drawn_ahead_that_is_taken_is_drawn_again(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    till = h.till()
    taken = till.request(1000).trans_id
    draws: list[str] = []
    fresh = iter(["7000000001", "7000000002"])

    def drawn() -> str:
        # The first draw (made ahead of the unit) repeats a transId already stored.
        value = taken if not draws else next(fresh)
        draws.append(value)
        return value

    monkeypatch.setattr(gateway_module, "new_trans_id", drawn)
    paid = till.request(1300)
    assert paid.status is S.COMPLETED
    assert paid.trans_id == "7000000001"
    assert draws == [taken, "7000000001"]
    assert len(h.table("payments")) == 2


def test_a_qr_payment_gets_its_request_hash_made_ahead(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    till = h.till()
    till.request(1000)
    threads = _spy_on_keyed_hashes(monkeypatch)
    shown = till.qr(2000)
    assert shown.status is S.PENDING
    assert threads and WRITER_THREAD not in threads, threads
    assert h.payment_row(shown.trans_id)["request_hash"] == keyed_hash(
        _code_key(h), "MERCHANT_QR|2000|01"
    )


def test_once_the_key_is_known_the_sandbox_reads_the_code_with_the_session(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a round trip less (tests/scale/test_hot_postgres.py counts them); the code's
    # state must read the same either way.
    from kessai.connectors.sandbox import wallets  # noqa: PLC0415

    own_reads: list[object] = []
    original = wallets._CODE.run

    def counted(conn: object, params: object = None) -> object:
        own_reads.append(params)
        return original(conn, params)  # type: ignore[arg-type]

    monkeypatch.setattr(wallets._CODE, "run", counted)
    till = h.till()
    till.request(1000)  # the gateway learns the key: until then the sandbox reads the code itself
    assert len(own_reads) == 1
    own_reads.clear()
    code = h.codes()[0]
    assert till.request(1100, code=code).status is S.COMPLETED
    reused = till.request(1200, code=code)
    assert (reused.status, reused.failure_code) == (S.FAILED, "CODE_ALREADY_USED")
    # A code of the right shape that was never issued.
    unknown = till.request(1300, code=code[:-4] + ("0000" if code[-4:] != "0000" else "1111"))
    assert (unknown.status, unknown.failure_code) == (S.FAILED, "UNKNOWN_CODE")
    declined = till.request(1400, outcome="declined")
    assert (declined.status, declined.failure_code) == (S.FAILED, "DECLINED")
    assert own_reads == []
