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
import hashlib
import hmac
from collections.abc import Mapping
from typing import Final

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from kessai import keys

ENV_KEY: Final = keys.KEY_ENV
ENV_KEY_FILE: Final = keys.KEY_FILE_ENV
KEY_BYTES: Final = keys.KEY_BYTES
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
    return keys.generate_key()


def decode_master_key(text: str) -> bytes:
    """The 32 bytes of a master key given as hex or URL-safe Base64."""
    try:
        return keys.decode(text)
    except keys.MissingKey as exc:
        raise SecretKeyInvalid(
            f"{ENV_KEY} is not a {KEY_BYTES}-byte key; " + HOW_TO_SET_A_KEY
        ) from exc


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
        self._each = [Fernet(_fernet_key(m)) for m in masters]
        self._fernet = MultiFernet(self._each)

    @property
    def key_id(self) -> str:
        """The fingerprint of the key new secrets are encrypted with."""
        return self._ids[0]

    def encrypt(self, plaintext: str) -> str:
        """A token for ``plaintext``, decryptable by any key of this box."""
        return self._fernet.encrypt(plaintext.encode()).decode()

    @property
    def key_ids(self) -> list[str]:
        """The fingerprints of every configured key, current first."""
        return list(self._ids)

    def encrypt_each(self, plaintext: str) -> dict[str, str]:
        """A token for ``plaintext`` under each configured key, by key fingerprint.

        For a secret that processes configured with different keys (during a rotation) must all
        be able to open: each opens the token of a key it has.
        """
        return {
            ident: fernet.encrypt(plaintext.encode()).decode()
            for ident, fernet in zip(self._ids, self._each, strict=True)
        }

    def decrypt_any(self, tokens: Mapping[str, str]) -> str | None:
        """The plaintext of the first of ``tokens`` (by key fingerprint) a configured key opens."""
        for ident, fernet in zip(self._ids, self._each, strict=True):
            token = tokens.get(ident)
            if token is None:
                continue
            try:
                return fernet.decrypt(token.encode()).decode()
            except InvalidToken:
                continue
        return None

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
        """The box of the configured keys, or ``None`` when no key is configured at all."""
        try:
            configured = keys.configured(env)
        except keys.MissingKey as exc:
            raise SecretKeyInvalid(str(exc)) from exc
        return cls(configured) if configured else None
