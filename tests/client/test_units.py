"""The SDK's pure parts: keys, backoff, poll schedule, settings, error mapping, parsing, journal."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest

from kessai.client import (
    ConfigurationError,
    IdempotencyConflict,
    Journal,
    Payment,
    PaymentKind,
    PaymentStatus,
    PendingReason,
    PollSchedule,
    ProtocolError,
    RetryPolicy,
    TerminalConfig,
    new_trans_key,
)
from kessai.client import exceptions as errors
from kessai.client._core import mask_code
from kessai.client.config import write_config_file
from kessai.client.keys import KEY_LENGTH, is_valid_trans_key
from kessai.domain.errors import ERROR_CODES

MID = "1234567890123456"


def test_trans_keys_are_unique_ordered_and_fit_the_guide() -> None:
    keys = [new_trans_key() for _ in range(5000)]
    assert len(set(keys)) == len(keys)
    assert keys == sorted(keys)  # time-ordered, strictly, even within one millisecond
    assert all(len(k) == KEY_LENGTH <= 34 and k.isalnum() and is_valid_trans_key(k) for k in keys)
    # Keys made later in time sort later, whatever their random part.
    assert new_trans_key(now_ms=1_000) < new_trans_key(now_ms=2_000_000_000_000)


def test_backoff_is_capped_exponential_with_jitter() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    rng = random.Random(7)
    for retry in range(1, 10):
        step = min(4.0, 0.5 * 2 ** (retry - 1))
        for _ in range(50):
            assert step / 2 <= policy.backoff_s(retry, rng.random()) <= step
    with pytest.raises(ConfigurationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigurationError):
        RetryPolicy(base_delay_s=5, max_delay_s=1)


def test_poll_schedule_follows_the_providers_advice() -> None:
    schedule = PollSchedule()
    assert schedule.delay_s(1, 0.0) == 1.0
    assert schedule.delay_s(2, 5.0) == 2.0  # PayPay: every 2-3 s
    assert schedule.delay_s(20, 31.0) == 5.0  # WeChat Pay: every 5 s after 30 s
    assert schedule.timeout_s == 90.0 and schedule.max_polls >= 1
    with pytest.raises(ConfigurationError):
        PollSchedule(interval_s=0)


def test_settings_come_from_arguments_then_environment_then_file(tmp_path: Path) -> None:
    path = tmp_path / "terminal.toml"
    write_config_file(
        path,
        {
            "url": "http://file:1",
            "mid": MID,
            "password": "A" * 12,
            "os": "123456",
            "poll": {"interval_s": 3.0},
        },
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = {"KESSAI_TERMINAL_URL": "http://env:2", "KESSAI_TERMINAL_PASSCODE": "1234"}
    config = TerminalConfig.load(path, env=env, os="654321")
    assert config.base_url == "http://env:2"
    assert config.os == "654321" and config.pass_code == "1234" and config.mid == MID
    assert config.poll.interval_s == 3.0
    # Secrets stay out of logs and tracebacks that show the configuration.
    assert "A" * 12 not in repr(config) and "pass_code" not in repr(config)
    with pytest.raises(ConfigurationError, match="mid must be 16 digits"):
        TerminalConfig.load(path, env={}, mid="123")
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigurationError, match="missing settings: base_url, mid"):
        TerminalConfig.load(empty, env={}, password="A" * 12, os="123456")
    with pytest.raises(ConfigurationError, match="no config file"):
        TerminalConfig.load(tmp_path / "absent.toml", env={})
    (tmp_path / "bad.toml").write_text('colour = "red"\n')
    with pytest.raises(ConfigurationError, match="unknown setting"):
        TerminalConfig.load(tmp_path / "bad.toml", env={})


def test_the_device_key_defaults_to_this_machine() -> None:
    config = TerminalConfig(base_url="http://x", mid=MID, password="A" * 12, os="123456")
    key = config.device_key
    assert key and len(key) <= 50
    assert key == config.device_key  # stable


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("SESSION_INVALID", 401, errors.SessionExpired),
        ("WRONG_CREDENTIALS", 401, errors.LoginRefused),
        ("WRONG_PASSCODE", 403, errors.WrongPassCode),
        ("PAYMENT_NOT_FOUND", 404, errors.PaymentNotFound),
        ("TERMINAL_IN_USE", 409, errors.TerminalInUse),
        ("REFUND_EXCEEDS_REMAINING", 409, errors.InvalidState),
        ("NOT_A_PAYMENT_CODE", 422, errors.UnprocessableCode),
        ("PASSCODE_LOCKED", 429, errors.RateLimited),
        ("INTERNAL_ERROR", 500, errors.ServerError),
        ("SOMETHING_NEW", 409, errors.Conflict),
        ("SOMETHING_NEW", 503, errors.ServerError),
        ("SOMETHING_NEW", 418, errors.GatewayError),
    ],
)
def test_error_codes_map_to_the_tree(code: str, status: int, cls: type[Exception]) -> None:
    assert errors.error_class_for(code, status) is cls


def test_every_documented_gateway_code_is_mapped() -> None:
    assert set(ERROR_CODES) <= set(errors.CODE_TO_ERROR)


def _wire(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "transId": "1234567890",
        "transKey": "K1",
        "kind": "CUSTOMER_CODE",
        "serviceId": "01",
        "serviceName": "PayPay",
        "amount": 100,
        "currency": "JPY",
        "status": "COMPLETED",
        "pendingReason": None,
        "refundedAmount": 0,
        "refundableAmount": 100,
        "refunds": [],
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:01Z",
    }
    data.update(changes)
    return data


def test_payment_parsing_is_pessimistic() -> None:
    assert Payment.from_wire(_wire()).is_paid
    unknown = Payment.from_wire(_wire(status="SETTLING_SOMEHOW"))
    assert unknown.status is PaymentStatus.PENDING and not unknown.is_final
    assert unknown.pending_reason is PendingReason.OUTCOME_UNKNOWN
    assert not unknown.is_paid and not unknown.is_unpaid
    with pytest.raises(ProtocolError):
        Payment.from_wire(_wire(amount="100"))
    with pytest.raises(ProtocolError):
        Payment.from_wire(_wire(amount=True))
    with pytest.raises(ProtocolError):
        Payment.from_wire([])
    round_trip = Payment.from_wire(Payment.from_wire(_wire()).to_dict())
    assert round_trip == Payment.from_wire(_wire())


def test_codes_are_masked_in_the_journal() -> None:
    assert mask_code("900081818845855642567638") == "9000******************38"
    assert mask_code("12345678") == "********"


def test_journal_states_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "journal.db"
    with Journal(path) as journal:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        entry = journal.record_intent(
            trans_key="K1",
            mid=MID,
            kind=PaymentKind.CUSTOMER_CODE,
            amount=100,
            service_id=None,
            code_masked="9000**38",
        )
        assert (entry.status, entry.attempts, entry.is_resolved) == ("INTENT", 0, False)
        # Recovery that read INTENT cannot mark NOT_SENT once the entry was marked SENT.
        journal.mark_sent("K1")
        assert not journal.mark_unsent("K1", "NOT_SENT", if_status="INTENT", if_attempts=0)
        assert journal.entry("K1").status == "SENT"  # type: ignore[union-attr]
        # Nor NOT_RECEIVED when it read SENT but the request was sent again meanwhile.
        journal.mark_sent("K1")
        assert not journal.mark_unsent("K1", "NOT_RECEIVED", if_status="SENT", if_attempts=1)
        sent = journal.entry("K1")
        assert sent is not None and (sent.status, sent.attempts) == ("SENT", 2)
        with pytest.raises(IdempotencyConflict):
            journal.record_intent(
                trans_key="K1",
                mid=MID,
                kind=PaymentKind.CUSTOMER_CODE,
                amount=101,
                service_id=None,
                code_masked=None,
            )
        assert journal.record_payment(Payment.from_wire(_wire()))
        done = journal.entry("K1")
        assert done is not None and done.status == "COMPLETED" and done.resolved_at is not None
        # A late "never arrived" cannot overwrite the gateway's word.
        journal.mark_unsent("K1", "NOT_RECEIVED")
        assert journal.entry("K1").status == "COMPLETED"  # type: ignore[union-attr]
        assert not journal.record_payment(Payment.from_wire(_wire(transKey="OTHER")))
    os.chmod(path, 0o644)
    with Journal(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened on open
