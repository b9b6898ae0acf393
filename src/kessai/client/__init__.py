"""The Kessai terminal SDK: take QR-code payments from a shop terminal, and never lose one.

::

    from kessai.client import Terminal

    with Terminal() as terminal:              # settings from KESSAI_TERMINAL_* or the config file
        payment = terminal.pay(1200, code)    # the code the scanner read from the customer
        if not payment.is_final:              # the customer confirms in the app, or the wallet
            payment = terminal.wait(payment.trans_id)   # has not answered yet
        print(payment.status, payment.trans_id)

Every payment is journaled before its request leaves (``Journal``), retried with the same
transKey, and resolved after a crash by ``recover()``. Errors: ``kessai.client.exceptions``.
"""

from kessai.client.config import PollSchedule, RetryPolicy, TerminalConfig
from kessai.client.exceptions import (
    AuthenticationError,
    ConfigurationError,
    Conflict,
    ConnectError,
    GatewayError,
    IdempotencyConflict,
    InvalidRequest,
    InvalidState,
    JournalError,
    LoginRefused,
    NetworkError,
    NotFound,
    OutcomeUnknown,
    PaymentNotFound,
    PermissionDenied,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    ServerError,
    SessionExpired,
    TerminalDisabled,
    TerminalError,
    TerminalInUse,
    TransportError,
    UnprocessableCode,
    WrongPassCode,
)
from kessai.client.journal import Journal, JournalEntry, JournalRefund
from kessai.client.keys import new_trans_key
from kessai.client.models import (
    Identification,
    Payment,
    PaymentKind,
    PaymentStatus,
    PendingReason,
    QrImage,
    Refund,
    RefundStatus,
    Session,
)
from kessai.client.recovery import RecoveredPayment, RecoveredRefund, RecoveryReport
from kessai.client.terminal import AsyncTerminal, Terminal

__all__ = [
    "AsyncTerminal",
    "AuthenticationError",
    "ConfigurationError",
    "Conflict",
    "ConnectError",
    "GatewayError",
    "IdempotencyConflict",
    "Identification",
    "InvalidRequest",
    "InvalidState",
    "Journal",
    "JournalEntry",
    "JournalError",
    "JournalRefund",
    "LoginRefused",
    "NetworkError",
    "NotFound",
    "OutcomeUnknown",
    "Payment",
    "PaymentKind",
    "PaymentNotFound",
    "PaymentStatus",
    "PendingReason",
    "PermissionDenied",
    "PollSchedule",
    "ProtocolError",
    "QrImage",
    "RateLimited",
    "RecoveredPayment",
    "RecoveredRefund",
    "RecoveryReport",
    "Refund",
    "RefundStatus",
    "RequestTimeout",
    "RetryPolicy",
    "ServerError",
    "Session",
    "SessionExpired",
    "Terminal",
    "TerminalConfig",
    "TerminalDisabled",
    "TerminalError",
    "TerminalInUse",
    "TransportError",
    "UnprocessableCode",
    "WrongPassCode",
    "new_trans_key",
]
