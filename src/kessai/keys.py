"""The gateway's master key, and the secrets derived from it.

The master key never lives in the database: it comes from ``KESSAI_SECRET_KEY`` (64 hex digits or
URL-safe Base64 of 32 bytes) or from the file named by ``KESSAI_SECRET_KEY_FILE``. Every instance
of a deployment must be given the same key. ``kessai admin key generate`` prints a new one.

Webhook signing secrets are derived from it: ``HMAC-SHA256(master, "webhook|" + nonce)``, where
only the nonce is stored, so a copy of the database alone cannot forge a webhook.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from kessai.domain.errors import InvalidRequest

KEY_ENV: Final = "KESSAI_SECRET_KEY"
KEY_FILE_ENV: Final = "KESSAI_SECRET_KEY_FILE"
KEY_BYTES: Final = 32


class MissingKey(InvalidRequest):
    """No master key is configured, so secrets cannot be issued or used."""


def generate_key() -> str:
    """A new master key, as 64 hex digits."""
    return secrets.token_hex(KEY_BYTES)


def _decode(text: str) -> bytes:
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != KEY_BYTES:
        raise MissingKey(
            f"the master key must be {KEY_BYTES} bytes, as 64 hex digits or Base64; "
            "`kessai admin key generate` prints one",
            field=KEY_ENV,
        )
    return raw


def master_key() -> bytes:
    """The configured master key; MissingKey with what to do when there is none."""
    value = os.environ.get(KEY_ENV)
    if value:
        return _decode(value)
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            return _decode(Path(path).read_text())
        except OSError as exc:
            raise MissingKey(
                f"cannot read the key file {path}: {exc.strerror}", field=KEY_FILE_ENV
            ) from exc
    raise MissingKey(
        f"no master key: set {KEY_ENV} (or {KEY_FILE_ENV}) on every instance; "
        "`kessai admin key generate` prints a new key",
        field=KEY_ENV,
    )


def derive(purpose: str, nonce: str) -> bytes:
    """A secret for ``purpose`` bound to ``nonce``, derived from the master key."""
    return hmac.new(master_key(), f"{purpose}|{nonce}".encode(), hashlib.sha256).digest()


def webhook_secret(nonce: str) -> str:
    """The signing secret of a webhook endpoint, as merchants configure it (``whsec_…``)."""
    return "whsec_" + base64.urlsafe_b64encode(derive("webhook", nonce)).decode().rstrip("=")
