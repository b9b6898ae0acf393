"""Secrets: credential issuing, slow hashes, session tokens and masking of customer codes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import ssl
import string
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP's minimum argon2id profile (19 MiB, 2 passes, 1 lane): about 20 ms here, which keeps
# LOGIN and CANCEL fast while making an offline guess of a 12-character password hopeless. The
# 4-digit passCode is protected by the lockout, not by the hash.
_hasher: Final = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)

SESSION_TOKEN_BYTES: Final = 32  # 256 bits, well over the 128 the design asks for
_ALNUM: Final = string.ascii_letters + string.digits


REQUEST_ID_BITS: Final = 80


def new_request_id() -> str:
    """An opaque id for one request: 20 hex digits (80 random bits), so unique in practice.

    Drawn like transIds (``random_below``): no system call per request, and random rather than
    counted, so an id does not tell how many requests came before it.
    """
    return f"{random_below(1 << REQUEST_ID_BITS):020x}"


def hash_secret(value: str) -> str:
    """Return an argon2id hash of a password or passCode."""
    return _hasher.hash(value)


def verify_secret(stored_hash: str, value: str) -> bool:
    """Check ``value`` against an argon2 hash without raising on a mismatch."""
    try:
        return _hasher.verify(stored_hash, value)
    except (VerificationError, InvalidHashError):
        return False


def new_session_token() -> str:
    """A fresh bearer token (URL-safe, 256 random bits)."""
    return secrets.token_urlsafe(SESSION_TOKEN_BYTES)


def token_hash(token: str) -> str:
    """The SHA-256 of a session token: what the database keeps instead of the token.

    A fast hash is right here because the token has 256 random bits; there is nothing to guess.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_of(session_token: str) -> str:
    """The console's CSRF token for a session, derived from the session's own token.

    So that no copy of it need be stored: the database keeps only digests, and a copy of it
    cannot be used to forge a logged-in user's forms.
    """
    mac = hmac.new(session_token.encode(), b"kessai console csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def random_digits(count: int) -> str:
    """``count`` random decimal digits (a leading zero allowed)."""
    # One draw for all the digits: uniform over 10**count, so every digit is uniform too.
    return f"{random_below(10**count):0{count}d}" if count else ""


def new_mid() -> str:
    """A 16-digit terminal identifier; it never starts with 0 so it survives numeric parsing."""
    return secrets.choice("123456789") + random_digits(15)


def new_password() -> str:
    """A 12-character alphanumeric login password with at least one letter and one digit."""
    while True:
        value = "".join(secrets.choice(_ALNUM) for _ in range(12))
        if any(c.isdigit() for c in value) and any(c.isalpha() for c in value):
            return value


def new_passcode() -> str:
    """A 4-digit refund passCode."""
    return random_digits(4)


def new_os() -> str:
    """A 6-digit integration identifier."""
    return secrets.choice("123456789") + random_digits(5)


def random_below(bound: int) -> int:
    """A uniformly random integer in ``[0, bound)`` from OpenSSL's CSPRNG, for ids on hot paths.

    ``secrets`` reads the OS's random source on every draw: a system call that lets another
    thread take the GIL (on the event loop, the database's writer thread) and then waits to get
    it back. OpenSSL's generator is seeded from the OS, reseeds itself, including in a forked
    child, and answers from memory while the GIL is held. Request ids, transIds and every digit
    string are drawn here; passwords and session tokens still come from ``secrets``. Drawing one
    byte more than ``bound`` needs makes the rejection below rare; it keeps every value equally
    likely.
    """
    if bound <= 0:
        raise ValueError("bound must be above zero")
    size = (bound.bit_length() + 7) // 8 + 1
    span = 1 << (8 * size)
    limit = span - span % bound
    while True:
        value = int.from_bytes(ssl.RAND_bytes(size))
        if value < limit:
            return value % bound


def new_trans_id() -> str:
    """A 10-digit payment number; random so that payment volume cannot be read from it."""
    return str(1_000_000_000 + random_below(9_000_000_000))


def new_refund_id() -> str:
    """A refund's identifier: ``R`` and 11 digits."""
    return "R" + random_digits(11)


def mask_code(code: str) -> str:
    """A customer code as it may appear in logs, answers and the database.

    Keeps the first four and last two characters, enough for a human to tell two codes apart and
    to see the wallet, far too little to replay it.
    """
    if len(code) <= 8:
        return "*" * len(code)
    hidden = len(code) - 6
    return f"{code[:4]}{'*' * min(hidden, 26)}{code[-2:]}"


# HMAC states with their key already absorbed, by key. A new key (a rotation, a test's own
# database) empties the cache once it holds this many, so it stays small.
_MAC_KEYS_KEPT: Final = 8
_macs: dict[str, hmac.HMAC] = {}


def keyed_hash(key: str, value: str) -> str:
    """HMAC-SHA256 of ``value``: lets us compare customer codes without keeping them.

    Starts from a copy of a state that has absorbed the key: cheaper than ``hmac.digest``, which
    also lets go of the GIL for every call, however short the value (a request's fingerprint and
    its code are hashed on the event loop, while the writer thread waits for the GIL).
    """
    keyed = _macs.get(key)
    if keyed is None:
        if len(_macs) >= _MAC_KEYS_KEPT:
            _macs.clear()
        keyed = _macs[key] = hmac.new(key.encode(), digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(value.encode())
    return mac.hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two secrets without leaking where they differ."""
    return hmac.compare_digest(a.encode(), b.encode())
