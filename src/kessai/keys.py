"""The gateway's master key, and the secrets derived from it.

The master key never lives in the database: it comes from ``KESSAI_SECRET_KEY`` (64 hex digits or
URL-safe Base64 of 32 bytes) or from the file named by ``KESSAI_SECRET_KEY_FILE``. Every instance
of a deployment must be given the same key. ``kessai admin key generate`` prints a new one.

Several keys may be given, separated by commas: the first is the current one. Webhook signing
secrets are derived from it: ``HMAC-SHA256(master, "webhook|" + nonce)``, where
only the nonce is stored, so a copy of the database alone cannot forge a webhook.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from kessai.domain.errors import InvalidRequest

KEY_ENV: Final = "KESSAI_SECRET_KEY"
KEY_FILE_ENV: Final = "KESSAI_SECRET_KEY_FILE"
KEY_BYTES: Final = 32
# A key file larger than this is not a key file.
MAX_KEY_FILE_BYTES: Final = 4096


class MissingKey(InvalidRequest):
    """No master key is configured, so secrets cannot be issued or used."""


def generate_key() -> str:
    """A new master key, as 64 hex digits."""
    return secrets.token_hex(KEY_BYTES)


def decode(text: str) -> bytes:
    """The 32 bytes of one master key given as hex or URL-safe Base64."""
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


def configured(env: Mapping[str, str] | None = None) -> list[str]:
    """The configured master keys as text, current first (several, comma-separated, rotate).

    Read from ``KESSAI_SECRET_KEY``, or else from the file ``KESSAI_SECRET_KEY_FILE`` names.
    """
    env = os.environ if env is None else env
    raw = env.get(KEY_ENV, "").strip()
    if not raw:
        path = env.get(KEY_FILE_ENV, "").strip()
        if not path:
            return []
        try:
            data = Path(path).read_bytes()[: MAX_KEY_FILE_BYTES + 1]
        except OSError as exc:
            raise MissingKey(
                f"the key file {path} cannot be read: {exc.strerror}", field=KEY_FILE_ENV
            ) from exc
        if len(data) > MAX_KEY_FILE_BYTES:
            raise MissingKey(f"{path} is too large to be a key file", field=KEY_FILE_ENV)
        raw = data.decode(errors="replace")
    return [key.strip() for key in raw.split(",") if key.strip()]


def master_key() -> bytes:
    """The current master key; MissingKey with what to do when there is none."""
    keys = configured()
    if not keys:
        raise MissingKey(
            f"no master key: set {KEY_ENV} (or {KEY_FILE_ENV}) on every instance; "
            "`kessai admin key generate` prints a new key",
            field=KEY_ENV,
        )
    return decode(keys[0])


def derive(purpose: str, nonce: str) -> bytes:
    """A secret for ``purpose`` bound to ``nonce``, derived from the master key."""
    return hmac.new(master_key(), f"{purpose}|{nonce}".encode(), hashlib.sha256).digest()


def webhook_secret(nonce: str) -> str:
    """The signing secret of a webhook endpoint, as merchants configure it (``whsec_…``)."""
    return "whsec_" + base64.urlsafe_b64encode(derive("webhook", nonce)).decode().rstrip("=")
