"""Validation of the guide's fields, with messages a POS developer can act on.

Formats follow the guide (section 1): mid 16 digits, key up to 50 characters, password 12
alphanumerics, passCode 4 digits, os 6 digits, transKey up to 34 alphanumerics, transId 10 digits,
serviceId 2 digits. Our own fields: refundKey like transKey; voucherNo up to 20 characters.
"""

from __future__ import annotations

import re
from typing import Final

from kessai.domain.errors import InvalidRequest
from kessai.domain.model import MAX_AMOUNT_YEN, MIN_AMOUNT_YEN

_RULES: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "mid": (re.compile(r"[0-9]{16}"), "16 digits"),
    # The guide asks for alphanumerics; MAC addresses are commonly written with ':' or '-', so
    # those separators are accepted too.
    "key": (re.compile(r"[A-Za-z0-9:\-]{1,50}"), "1 to 50 letters, digits, ':' or '-'"),
    "password": (re.compile(r"[A-Za-z0-9]{12}"), "12 letters or digits"),
    "passCode": (re.compile(r"[0-9]{4}"), "4 digits"),
    "os": (re.compile(r"[0-9]{6}"), "6 digits"),
    "transKey": (re.compile(r"[A-Za-z0-9]{1,34}"), "1 to 34 letters or digits"),
    "refundKey": (re.compile(r"[A-Za-z0-9]{1,34}"), "1 to 34 letters or digits"),
    "transId": (re.compile(r"[0-9]{10}"), "10 digits"),
    "serviceId": (re.compile(r"[0-9]{2}"), "2 digits"),
    "voucherNo": (re.compile(r"[A-Za-z0-9\-]{1,20}"), "1 to 20 letters, digits or '-'"),
}


def check(field: str, value: str) -> str:
    """Return ``value`` when it has the format of ``field``; raise INVALID_FIELD otherwise."""
    pattern, description = _RULES[field]
    if not pattern.fullmatch(value):
        raise InvalidRequest(f"{field} must be {description}", code="INVALID_FIELD", field=field)
    return value


def json_schema_pattern(field: str) -> str:
    """The format of ``field`` as an anchored JSON Schema pattern, for the OpenAPI description.

    The rules above are the only copy of each format: the API description is derived from them,
    so it cannot drift from what :func:`check` accepts.
    """
    return f"^{_RULES[field][0].pattern}$"


def check_amount(amount: int, field: str = "amount") -> int:
    """Return ``amount`` when it is integer yen within the documented bounds."""
    # bool is an int in Python; a JSON true must never become one yen.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidRequest(f"{field} must be an integer number of yen", field=field)
    if not MIN_AMOUNT_YEN <= amount <= MAX_AMOUNT_YEN:
        raise InvalidRequest(
            f"{field} must be between {MIN_AMOUNT_YEN} and {MAX_AMOUNT_YEN:,} yen",
            field=field,
        )
    return amount
