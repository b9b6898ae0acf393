"""Signing webhook events, and verifying them on the receiving side.

Every delivery carries ``Kessai-Signature: t=<unix seconds>,b=<sha256 of body, hex>,v1=<mac>``
where ``mac = hex(HMAC-SHA256(secret, "<t>.<b>"))``. A receiver checks, in this order:

1. the body it received hashes to ``b`` — otherwise the body changed on the way (``body``);
2. the MAC with its secret matches ``v1`` — otherwise the secret is wrong (``secret``);
3. ``t`` is within the tolerance of its clock (default 5 minutes) — otherwise a replay or a
   skewed clock (``clock``);
4. it has not processed this ``Kessai-Event-Id`` before — events are delivered at least once.

``verify`` does 1–3 and says which part failed, so an integrator can tell a wrong secret from a
proxy that re-encoded the JSON. Receivers in other languages need only HMAC-SHA256 and SHA-256.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Final

SIGNATURE_HEADER: Final = "Kessai-Signature"
EVENT_ID_HEADER: Final = "Kessai-Event-Id"
DEFAULT_TOLERANCE_SECONDS: Final = 300
# What each field of the header must look like; anything else (empty, non-ASCII) is malformed.
_FORMS: Final = {
    "t": re.compile(r"[0-9]{1,20}", re.ASCII),
    "b": re.compile(r"[0-9a-f]{64}", re.ASCII),
    "v1": re.compile(r"[0-9a-f]{64}", re.ASCII),
}
_WHAT: Final = {
    "t": "not a time in unix seconds",
    "b": "not a SHA-256 digest in hex",
    "v1": "not an HMAC-SHA256 in hex",
}


class SignatureError(Exception):
    """A webhook signature did not verify; ``part`` says what was wrong."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part  # "header", "body", "secret" or "clock"


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    digest = hashlib.sha256(body).hexdigest()
    mac = hmac.new(secret.encode(), f"{timestamp}.{digest}".encode(), hashlib.sha256)
    return f"t={timestamp},b={digest},v1={mac.hexdigest()}"


def verify(
    secret: str,
    header: str,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check a delivery's signature; answers its timestamp or raises SignatureError.

    A header whose ``t``, ``b`` or ``v1`` is missing, repeated, empty or not in the form ``sign``
    writes (ASCII digits; 64 lowercase hex digits) is malformed: part ``header``, the message
    naming the field.
    """
    parts: dict[str, str] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key in parts and key in _FORMS:
            raise SignatureError("header", f"malformed {SIGNATURE_HEADER} header: {key} repeated")
        parts[key] = value.strip()
    for key, form in _FORMS.items():
        if key not in parts:
            raise SignatureError("header", f"malformed {SIGNATURE_HEADER} header: no {key}")
        if form.fullmatch(parts[key]) is None:
            raise SignatureError(
                "header", f"malformed {SIGNATURE_HEADER} header: {key} is {_WHAT[key]}"
            )
    timestamp = int(parts["t"])
    claimed_digest = parts["b"]
    claimed_mac = parts["v1"]
    if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), claimed_digest):
        raise SignatureError("body", "the body is not the one that was signed")
    expected = hmac.new(
        secret.encode(), f"{timestamp}.{claimed_digest}".encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, claimed_mac):
        raise SignatureError("secret", "the signature does not match this secret")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise SignatureError(
            "clock", f"the timestamp is {int(current - timestamp)} s away from this clock"
        )
    return timestamp
