"""transKey and refundKey generation: unique, time-ordered, 26 alphanumerics (a ULID).

A ULID is 48 bits of milliseconds since the Unix epoch followed by 80 random bits, written in
Crockford's base 32 (digits and upper-case letters, no I, L, O or U). Keys sort by the time they
were made, which keeps the journal and the gateway's books in sale order, and fit the guide's
limit of 34 alphanumerics. Within one millisecond the random part is incremented, so keys made
by one process are strictly increasing even when the clock stands still or steps back.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Final

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_BITS: Final = 48
_RANDOM_BITS: Final = 80
KEY_LENGTH: Final = 26
# The guide's transKey: up to 34 letters or digits.
TRANS_KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9]{1,34}")

_lock = threading.Lock()
_last: list[int] = [0, 0]  # [milliseconds, random part] of the last key made by this process


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_trans_key(now_ms: int | None = None) -> str:
    """A fresh key for a payment (transKey) or a refund (refundKey)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    with _lock:
        last_ms, last_random = _last
        if ms <= last_ms:
            # Same millisecond (or the clock stepped back): stay ordered by counting up.
            ms, rand = last_ms, last_random + 1
            if rand >= 1 << _RANDOM_BITS:
                ms, rand = last_ms + 1, secrets.randbits(_RANDOM_BITS - 1)
        else:
            # One bit of headroom keeps the increments above from overflowing in practice.
            rand = secrets.randbits(_RANDOM_BITS - 1)
        _last[0], _last[1] = ms, rand
    if ms >= 1 << _TIME_BITS:
        raise ValueError("time out of the ULID range")
    key = _encode(ms, 10) + _encode(rand, 16)
    # Survives python -O: a malformed key would be refused by the gateway after the intent
    # was journaled.
    if len(key) != KEY_LENGTH or not TRANS_KEY_PATTERN.fullmatch(key):
        raise AssertionError(f"malformed key {key!r}")
    return key


def is_valid_trans_key(value: str) -> bool:
    """True when ``value`` has the guide's transKey format (1 to 34 letters or digits)."""
    return TRANS_KEY_PATTERN.fullmatch(value) is not None
