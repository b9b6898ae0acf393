"""Every error the terminal SDK raises, mapped from the gateway's error codes at the boundary.

The tree (HTTP status of the gateway's answer, where there is one)::

    TerminalError                      base; every error has ``retryable``
    ├── ConfigurationError             a setting is missing or malformed (mid, password, os, …)
    ├── JournalError                   the local journal cannot be opened or written
    ├── TransportError                 no usable answer came back                (retryable)
    │   ├── ConnectError               could not connect: the request never left
    │   ├── RequestTimeout             the answer did not come in time
    │   ├── NetworkError               the connection broke during the exchange
    │   └── ProtocolError              the answer was not the API's (not JSON, fields missing)
    ├── OutcomeUnknown                 a payment or refund was sent and its outcome is unknown:
    │                                  never "declined"; resolve it with recover() or status()
    └── GatewayError                   the gateway answered with its error envelope
        ├── InvalidRequest        4xx  MALFORMED_JSON, INVALID_FIELD, UNKNOWN_FIELD,
        │                              SERVICE_MISMATCH, UNKNOWN_SERVICE, BODY_TOO_LARGE,
        │                              UNSUPPORTED_MEDIA_TYPE, METHOD_NOT_ALLOWED,
        │                              NOTIFICATION_REJECTED
        ├── AuthenticationError   401
        │   ├── SessionExpired         SESSION_INVALID, SESSION_REQUIRED (the SDK logs in again)
        │   └── LoginRefused           WRONG_CREDENTIALS, UNKNOWN_OS
        ├── PermissionDenied      403
        │   ├── TerminalDisabled       TERMINAL_DISABLED
        │   └── WrongPassCode          WRONG_PASSCODE
        ├── NotFound              404  NOT_FOUND (no such route: check the gateway URL)
        │   └── PaymentNotFound        PAYMENT_NOT_FOUND
        ├── Conflict              409
        │   ├── TerminalInUse          TERMINAL_IN_USE (this mid is logged in on another device)
        │   ├── IdempotencyConflict    IDEMPOTENCY_CONFLICT
        │   └── InvalidState           PAYMENT_NOT_REFUNDABLE, REFUND_EXCEEDS_REMAINING,
        │                              PAYMENT_NOT_EDITABLE
        ├── UnprocessableCode     422  NOT_A_PAYMENT_CODE, SERVICE_NOT_SUPPORTED
        ├── RateLimited           429  LOGIN_LOCKED, PASSCODE_LOCKED, TOO_MANY_ATTEMPTS
        │                              (``retry_after_s``)
        └── ServerError           5xx  INTERNAL_ERROR, any other 5xx
                                       (retryable)

``retryable`` is true only when sending the *same* request again may succeed; the SDK retries
those by itself (with the same transKey or refundKey, so a retry never pays or refunds twice)
and raises only once its retry budget is spent.

A gateway error with a code this SDK does not know becomes the family of its HTTP status, so a
newer gateway never breaks an older terminal.
"""

from __future__ import annotations

from typing import Final


class TerminalError(Exception):
    """Base of every error the terminal SDK raises."""

    default_retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable: bool = self.default_retryable if retryable is None else retryable


class ConfigurationError(TerminalError):
    """A setting the operation needs is missing or malformed."""


class JournalError(TerminalError):
    """The local journal cannot be opened or written; no request was sent."""


class TransportError(TerminalError):
    """No usable answer came back from the gateway."""

    default_retryable = True


class ConnectError(TransportError):
    """The connection could not be made, so the request never left this machine."""


class RequestTimeout(TransportError):
    """The gateway did not answer in time; it may or may not have acted on the request."""


class NetworkError(TransportError):
    """The connection broke during the exchange; the gateway may have acted on the request."""


class ProtocolError(TransportError):
    """The answer was not one of the API's (not JSON, or fields are missing)."""


class OutcomeUnknown(TerminalError):
    """A payment or refund was sent, and whether it happened is not known yet.

    This is never a decline: the customer may have been charged. The journal keeps the entry
    unresolved; ``recover()`` (or ``status(trans_key)``) finds out. Retrying the same call with
    the same ``trans_key`` (or ``refund_key``) is safe and never charges twice.
    """

    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        trans_key: str | None = None,
        refund_key: str | None = None,
        trans_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.trans_key = trans_key
        self.refund_key = refund_key
        self.trans_id = trans_id


class GatewayError(TerminalError):
    """The gateway answered with its error envelope."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status_code: int,
        field: str | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.code = code
        self.status_code = status_code
        self.field = field
        self.request_id = request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        rid = f" [request {self.request_id}]" if self.request_id else ""
        return f"{self.code}: {self.message}{where}{rid}"


class InvalidRequest(GatewayError):
    """The request was malformed or a field was out of bounds; nothing changed."""


class AuthenticationError(GatewayError):
    """The session or the login credentials were not accepted."""


class SessionExpired(AuthenticationError):
    """The session ended (LOGOUT, idle, an administrator); the SDK logs in again by itself."""


class LoginRefused(AuthenticationError):
    """LOGIN was refused: wrong mid or password, or an os no integration registered."""


class PermissionDenied(GatewayError):
    """The terminal is known but may not do this."""


class TerminalDisabled(PermissionDenied):
    """An administrator disabled this terminal."""


class WrongPassCode(PermissionDenied):
    """CANCEL with a wrong passCode; repeated ones lock refunds on the terminal."""


class NotFound(GatewayError):
    """No such route (check the gateway URL)."""


class PaymentNotFound(NotFound):
    """No payment with this transId or transKey for this merchant."""


class Conflict(GatewayError):
    """The request conflicts with the gateway's state or with an earlier request."""


class TerminalInUse(Conflict):
    """The mid is logged in on another device (another key)."""


class IdempotencyConflict(Conflict):
    """The transKey or refundKey was used before with other parameters."""


class InvalidState(Conflict):
    """The payment's state forbids the operation (not refundable, not editable, …)."""


class UnprocessableCode(GatewayError):
    """The scanned code is no wallet's, or the service is not offered here."""


class RateLimited(GatewayError):
    """Locked after repeated failures; wait ``retry_after_s`` (or ask an administrator)."""


class ServerError(GatewayError):
    """The gateway failed (5xx); the same request may succeed later."""

    default_retryable = True


# The gateway's error codes (docs/errors.md) and the class each becomes.
CODE_TO_ERROR: Final[dict[str, type[GatewayError]]] = {
    "MALFORMED_JSON": InvalidRequest,
    "NOTIFICATION_REJECTED": InvalidRequest,
    "INVALID_FIELD": InvalidRequest,
    "UNKNOWN_FIELD": InvalidRequest,
    "SERVICE_MISMATCH": InvalidRequest,
    "UNKNOWN_SERVICE": InvalidRequest,
    "BODY_TOO_LARGE": InvalidRequest,
    "UNSUPPORTED_MEDIA_TYPE": InvalidRequest,
    "METHOD_NOT_ALLOWED": InvalidRequest,
    "SESSION_REQUIRED": SessionExpired,
    "SESSION_INVALID": SessionExpired,
    "UNKNOWN_OS": LoginRefused,
    "WRONG_CREDENTIALS": LoginRefused,
    "TERMINAL_DISABLED": TerminalDisabled,
    "WRONG_PASSCODE": WrongPassCode,
    "PAYMENT_NOT_FOUND": PaymentNotFound,
    "NOT_FOUND": NotFound,
    "TERMINAL_IN_USE": TerminalInUse,
    "IDEMPOTENCY_CONFLICT": IdempotencyConflict,
    "PAYMENT_NOT_REFUNDABLE": InvalidState,
    "REFUND_EXCEEDS_REMAINING": InvalidState,
    "PAYMENT_NOT_EDITABLE": InvalidState,
    "NOT_A_PAYMENT_CODE": UnprocessableCode,
    "SERVICE_NOT_SUPPORTED": UnprocessableCode,
    "LOGIN_LOCKED": RateLimited,
    "PASSCODE_LOCKED": RateLimited,
    "TOO_MANY_ATTEMPTS": RateLimited,
    "INTERNAL_ERROR": ServerError,
}

# The family of an HTTP status, for codes this SDK does not know yet.
_STATUS_TO_ERROR: Final[dict[int, type[GatewayError]]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: UnprocessableCode,
    429: RateLimited,
}


def error_class_for(code: str, status_code: int) -> type[GatewayError]:
    """The most specific error class for a gateway error code and HTTP status."""
    known = CODE_TO_ERROR.get(code)
    if known is not None:
        return known
    if status_code >= 500:
        return ServerError
    return _STATUS_TO_ERROR.get(status_code, GatewayError)
