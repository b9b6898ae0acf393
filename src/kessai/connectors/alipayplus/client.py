r"""Alipay+ (acquirer side): HTTP plumbing and the RSA-SHA256 message signatures.

As Alipay+ documents it ("Sign a request and validate the signature", docs.alipayplus.com):

- content to sign = ``<HTTP-METHOD> <Request-URI>\\n<Client-Id>.<Request-Time>.<Request-Body>``;
- signature = url-encode(base64(SHA256withRSA(content, private key)));
- headers ``Client-Id``, ``Request-Time`` and
  ``Signature: algorithm=RSA256,keyVersion=<n>,signature=<signature>``.

Responses come back signed the same way with ``Response-Time`` in place of ``Request-Time`` and
the Alipay+ private key; they are validated with the Alipay+ public key. Notifications from
Alipay+ are requests signed by Alipay+, and our answer to them is signed by us.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kessai.clock import Clock, system_clock
from kessai.connectors.answers import send

ALGORITHM: Final = "RSA256"
CONTENT_TYPE: Final = "application/json; charset=UTF-8"


def content_to_sign(method: str, path: str, client_id: str, time_text: str, body: str) -> str:
    """The exact text Alipay+ signs and validates."""
    return f"{method.upper()} {path}\n{client_id}.{time_text}.{body}"


def load_private_key(text: str) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM, or from the bare base64 the Alipay+ tools print."""
    candidates = (
        [text]
        if "-----BEGIN" in text
        else [
            f"-----BEGIN PRIVATE KEY-----\n{text.strip()}\n-----END PRIVATE KEY-----\n",
            f"-----BEGIN RSA PRIVATE KEY-----\n{text.strip()}\n-----END RSA PRIVATE KEY-----\n",
        ]
    )
    for candidate in candidates:
        try:
            key = serialization.load_pem_private_key(candidate.encode(), password=None)
        except (ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPrivateKey):
            return key
    raise ValueError("not an RSA private key in PEM or base64 form")


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """An RSA public key from PEM, or from bare base64."""
    pem = (
        text
        if "-----BEGIN" in text
        else (f"-----BEGIN PUBLIC KEY-----\n{text.strip()}\n-----END PUBLIC KEY-----\n")
    )
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("not an RSA public key in PEM or base64 form") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def sign(private_key: rsa.RSAPrivateKey, content: str) -> str:
    """url-encode(base64(SHA256withRSA(content)))."""
    raw = private_key.sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())
    return quote(base64.b64encode(raw).decode(), safe="")


def verify(public_key: rsa.RSAPublicKey, content: str, signature: str) -> bool:
    """Whether ``signature`` (url-encoded base64) signs ``content``."""
    try:
        raw = base64.b64decode(unquote(signature), validate=True)
        public_key.verify(raw, content.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def signature_header(key_version: str, signature: str) -> str:
    """The ``Signature`` header value."""
    return f"algorithm={ALGORITHM},keyVersion={key_version},signature={signature}"


def parse_signature_header(value: str) -> dict[str, str]:
    """``algorithm``, ``keyVersion`` and ``signature`` of a ``Signature`` header."""
    fields: dict[str, str] = {}
    for part in value.split(","):
        name, sep, item = part.strip().partition("=")
        if sep:
            fields[name] = item
    return fields


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by case-insensitive name."""
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


@dataclass(frozen=True, slots=True)
class Reply:
    """An Alipay+ answer: HTTP status, decoded body, and whether its signature held."""

    status: int
    body: dict[str, Any] | None
    verified: bool

    def result(self, name: str = "result") -> tuple[str, str, str]:
        """(resultStatus, resultCode, resultMessage) of ``result`` or ``paymentResult``."""
        part = (self.body or {}).get(name)
        if not isinstance(part, dict):
            return "", "", ""
        return (
            str(part.get("resultStatus", "")),
            str(part.get("resultCode", "")),
            str(part.get("resultMessage", "")),
        )


class AlipayPlusClient:
    """Signed calls to Alipay+ for one acquirer account."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        client_id: str,
        private_key: str,
        alipay_public_key: str,
        key_version: str = "1",
        clock: Clock = system_clock,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._private_key = load_private_key(private_key)
        self.alipay_public_key = load_public_key(alipay_public_key)
        self.key_version = key_version
        self.clock = clock

    def now_text(self) -> str:
        """A Request-Time / Response-Time value (ISO 8601 with offset)."""
        return self.clock().isoformat(timespec="seconds")

    def signed_headers(self, method: str, path: str, body: str, time_header: str) -> dict[str, str]:
        """Client-Id, the time header and Signature for a message we send."""
        when = self.now_text()
        signature = sign(
            self._private_key, content_to_sign(method, path, self.client_id, when, body)
        )
        return {
            "Content-Type": CONTENT_TYPE,
            "Client-Id": self.client_id,
            time_header: when,
            "Signature": signature_header(self.key_version, signature),
        }

    def verify_message(
        self, method: str, path: str, headers: Mapping[str, str], body: str, time_header: str
    ) -> str | None:
        """Validate a message Alipay+ signed; the failed part's name, or ``None`` when valid."""
        client_id = header(headers, "Client-Id")
        when = header(headers, time_header)
        raw = header(headers, "Signature")
        if not client_id or not when or not raw:
            return "headers"
        if client_id != self.client_id:
            return "client"
        signature = parse_signature_header(raw).get("signature")
        if not signature:
            return "headers"
        content = content_to_sign(method, path, client_id, when, body)
        return None if verify(self.alipay_public_key, content, signature) else "signature"

    async def call(self, path: str, payload: dict[str, Any], timeout_seconds: float) -> Reply:
        """POST one signed request; transport errors propagate as ``httpx`` errors."""
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        response = await send(
            self.http,
            "POST",
            self.base_url + path,
            content=body.encode(),
            headers=self.signed_headers("POST", path, body, "Request-Time"),
            timeout=timeout_seconds,
        )
        text = response.text
        failed = self.verify_message("POST", path, response.headers, text, "Response-Time")
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        return Reply(
            response.status_code, decoded if isinstance(decoded, dict) else None, failed is None
        )
