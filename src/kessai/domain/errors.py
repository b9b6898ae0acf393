"""Every error the gateway reports, with its stable machine-readable code.

The tree is flat on purpose: one ``KessaiError`` subclass per error family. The HTTP status of an
error comes from its code in ``ERROR_CODES`` (the family's usual status is shown below)::

    KessaiError
    ├── InvalidRequest        400  malformed JSON, wrong types, bad field values
    ├── Unauthenticated       401  missing, unknown, ended or expired session token
    ├── Forbidden             403  credentials that are valid but not allowed (disabled terminal)
    ├── NotFound              404  unknown payment, route, or another merchant's payment
    ├── Conflict              409  idempotency conflicts, state that forbids the operation
    ├── PayloadTooLarge       413  request body over the limit
    ├── UnprocessableCode     422  a scanned code that is not a payment code we can route
    ├── RateLimited           429  too many wrong passwords or passCodes, or failed logins
    └── InternalError         500  a programmer error; never used for bad input

``ERROR_CODES`` documents every code; docs/errors.md is generated from the same table by a test
that keeps them in step.
"""

from __future__ import annotations

from typing import ClassVar, Final


class KessaiError(Exception):
    """Base of every error the gateway reports to a caller."""

    default_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        retryable: bool = False,
        retry_after_seconds: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code: str = code or self.default_code
        # An explicit check, not an assert: it must hold under `python -O` too.
        if self.code not in ERROR_CODES:
            raise ValueError(f"undocumented error code {self.code}")
        self.message = message
        self.field = field
        self.retryable = retryable
        self.retry_after_seconds = retry_after_seconds

    @property
    def http_status(self) -> int:
        """The HTTP status this error is answered with, from ``ERROR_CODES``."""
        return ERROR_CODES[self.code][0]


class InvalidRequest(KessaiError):
    """The request is malformed or a field has a wrong type or value."""

    default_code = "INVALID_FIELD"


class Unauthenticated(KessaiError):
    """No valid session, or login credentials that do not match."""

    default_code = "SESSION_INVALID"


class Forbidden(KessaiError):
    """The caller is known but may not do this."""

    default_code = "TERMINAL_DISABLED"


class NotFound(KessaiError):
    """The thing does not exist, or belongs to another merchant (answered identically)."""

    default_code = "PAYMENT_NOT_FOUND"


class Conflict(KessaiError):
    """The request conflicts with the current state or with an earlier request."""

    default_code = "IDEMPOTENCY_CONFLICT"


class PayloadTooLarge(KessaiError):
    """The request body is larger than the documented limit."""

    default_code = "BODY_TOO_LARGE"


class UnprocessableCode(KessaiError):
    """A scanned code that is well-formed input but not a payment code we can route."""

    default_code = "NOT_A_PAYMENT_CODE"


class RateLimited(KessaiError):
    """Too many failures: the caller must wait (or an admin must unlock)."""

    default_code = "LOGIN_LOCKED"


class InternalError(KessaiError):
    """A bug. Bad input never ends here."""

    default_code = "INTERNAL_ERROR"


# code -> (HTTP status, when it happens). The single source for docs/errors.md.
ERROR_CODES: Final[dict[str, tuple[int, str]]] = {
    "MALFORMED_JSON": (
        400,
        "The body is not valid JSON (or not UTF-8), not a JSON object, or repeats a key.",
    ),
    "INVALID_FIELD": (
        400,
        "A field is missing, has the wrong type, or a value out of bounds; "
        "STATUS's transKey is given twice.",
    ),
    "UNKNOWN_FIELD": (
        400,
        "The body has a field the operation does not define; STATUS has another query parameter.",
    ),
    "SERVICE_MISMATCH": (400, "serviceId was given and disagrees with the service of the code."),
    "UNKNOWN_SERVICE": (400, "serviceId names no service in the catalog."),
    "SESSION_REQUIRED": (401, "No `Authorization: Bearer <sessionToken>` header."),
    "SESSION_INVALID": (
        401,
        "The session token is unknown, ended (LOGOUT, admin) or idle-expired.",
    ),
    "UNKNOWN_OS": (401, "LOGIN with an os that no integration registered."),
    "WRONG_CREDENTIALS": (401, "LOGIN with an unknown mid or a wrong password."),
    "TERMINAL_DISABLED": (403, "The terminal was disabled by an administrator."),
    "TERMINAL_IN_USE": (409, "LOGIN with another key while this mid has a live session."),
    "PAYMENT_NOT_FOUND": (404, "No payment with this transId/transKey for this merchant."),
    "NOT_FOUND": (404, "No such route."),
    "METHOD_NOT_ALLOWED": (405, "The route exists but not with this HTTP method."),
    "IDEMPOTENCY_CONFLICT": (409, "The transKey or refundKey was used with other parameters."),
    "PAYMENT_NOT_REFUNDABLE": (
        409,
        "CANCEL on a payment that is not COMPLETED/PARTIALLY_REFUNDED.",
    ),
    "REFUND_EXCEEDS_REMAINING": (409, "The refund is larger than what remains to refund."),
    "PAYMENT_NOT_EDITABLE": (409, "VOUCHERNO on a payment that ended without being paid."),
    "BODY_TOO_LARGE": (413, "The request body exceeds the documented limit."),
    "NOTIFICATION_REJECTED": (
        400,
        "A provider notification whose signature or body did not verify.",
    ),
    "UNSUPPORTED_MEDIA_TYPE": (
        415,
        "A body that is a JSON object of the operation's fields, sent as a media type other than "
        "`application/json` or `…+json`.",
    ),
    "NOT_A_PAYMENT_CODE": (422, "The scanned code matches no wallet (e.g. a product barcode)."),
    "SERVICE_NOT_SUPPORTED": (
        422,
        "The service or flow is not offered for this merchant/provider.",
    ),
    "LOGIN_LOCKED": (
        429,
        "Too many wrong passwords for this mid; wait the seconds in the Retry-After header.",
    ),
    "PASSCODE_LOCKED": (429, "Refunds are locked after repeated wrong passCodes."),
    "TOO_MANY_ATTEMPTS": (
        429,
        "Too many failed logins from this client address; wait the seconds in the Retry-After "
        "header.",
    ),
    "WRONG_PASSCODE": (403, "CANCEL with a wrong passCode."),
    "INTERNAL_ERROR": (500, "A bug in the gateway. Please report it with the requestId."),
}
