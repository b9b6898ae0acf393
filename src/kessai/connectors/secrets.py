"""Provider secrets encrypted at rest.

API secrets, private keys and signing keys of the merchants' provider accounts are stored only as
Fernet tokens (AES-128-CBC with HMAC-SHA256, from ``cryptography``). The key never lives in the
database; it is the deployment's master key (the same one ``kessai.keys`` uses for webhooks):

- ``KESSAI_SECRET_KEY``: 32 bytes as 64 hex digits or URL-safe Base64. Several keys may be given,
  separated by commas: the first encrypts, all of them decrypt, so a key is rotated by putting
  the new one first (and re-running ``provider set`` with the secrets).
- ``KESSAI_SECRET_KEY_FILE``: a file holding the same, used when the variable is not set, so the
  key can come from a mounted secret instead of the process environment.

The Fernet key is derived from the master key (HMAC-SHA256 with a purpose label), so provider
secrets and webhook secrets never share key material. ``kessai admin key generate`` prints a new
master key. Without a key, storing a secret is refused with a message that says how to set one;
decrypted values are never logged or printed.
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

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENV_KEY: Final = "KESSAI_SECRET_KEY"
ENV_KEY_FILE: Final = "KESSAI_SECRET_KEY_FILE"
KEY_BYTES: Final = 32
# A key file larger than this is not a key file.
MAX_KEY_FILE_BYTES: Final = 4096
_PURPOSE: Final = b"provider-secrets|v1"

HOW_TO_SET_A_KEY: Final = (
    f"set {ENV_KEY} to the deployment's master key (64 hex digits or Base64 of 32 bytes), or "
    f"{ENV_KEY_FILE} to a file holding it; `kessai admin key generate` prints a new key"
)


class SecretKeyMissing(Exception):
    """No encryption key is configured, so secrets can be neither stored nor read."""

    def __init__(self) -> None:
        super().__init__(f"provider secrets need an encryption key: {HOW_TO_SET_A_KEY}")


class SecretKeyInvalid(Exception):
    """The configured key is malformed, or it is not the key the secret was stored with."""


def generate_key() -> str:
    """A fresh random master key (64 hex digits)."""
    return secrets.token_hex(KEY_BYTES)


def decode_master_key(text: str) -> bytes:
    """The 32 bytes of a master key given as hex or URL-safe Base64."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raw = b""
    if len(raw) != KEY_BYTES:
        raise SecretKeyInvalid(f"{ENV_KEY} is not a {KEY_BYTES}-byte key; " + HOW_TO_SET_A_KEY)
    return raw


def _fernet_key(master: bytes) -> bytes:
    return base64.urlsafe_b64encode(hmac.new(master, _PURPOSE, hashlib.sha256).digest())


def key_id(master: bytes) -> str:
    """A short, non-secret fingerprint of a key, stored beside each secret to name its key."""
    return hashlib.sha256(_fernet_key(master)).hexdigest()[:12]


class SecretBox:
    """Encrypts and decrypts provider secrets with the configured master keys."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SecretKeyMissing
        masters = [decode_master_key(k) for k in keys]
        self._ids = [key_id(m) for m in masters]
        self._fernet = MultiFernet([Fernet(_fernet_key(m)) for m in masters])

    @property
    def key_id(self) -> str:
        """The fingerprint of the key new secrets are encrypted with."""
        return self._ids[0]

    def encrypt(self, plaintext: str) -> str:
        """A token for ``plaintext``, decryptable by any key of this box."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str, stored_key_id: str | None = None) -> str:
        """The plaintext of ``token``; a wrong key is reported with both key fingerprints."""
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            known = ", ".join(self._ids)
            raise SecretKeyInvalid(
                f"a provider secret cannot be decrypted: it was stored with key {stored_key_id}, "
                f"the configured keys are {known}"
            ) from exc

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SecretBox | None:
        """The box of the configured key, or ``None`` when no key is configured at all."""
        env = os.environ if env is None else env
        raw = env.get(ENV_KEY, "").strip()
        if not raw:
            path = env.get(ENV_KEY_FILE, "").strip()
            if not path:
                return None
            raw = _read_key_file(Path(path))
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        return cls(keys) if keys else None


def _read_key_file(path: Path) -> str:
    try:
        data = path.read_bytes()[: MAX_KEY_FILE_BYTES + 1]
    except OSError as exc:
        raise SecretKeyInvalid(f"{ENV_KEY_FILE}={path} cannot be read: {exc.strerror}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SecretKeyInvalid(f"{ENV_KEY_FILE}={path} is too large to be a key file")
    return data.decode(errors="replace")
