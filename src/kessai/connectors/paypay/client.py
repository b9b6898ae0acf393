r"""PayPay Open Payment API: HTTP plumbing and the ``hmac OPA-Auth`` signature.

The signature, as PayPay documents it (www.paypay.ne.jp/opa/doc/v1.0/api_authorization.html):

1. ``hash`` = base64(MD5(content type + body)); both are the literal ``empty`` when there is no
   body (GET and DELETE).
2. string to sign = request path (no host, no query) ``\\n`` method ``\\n`` nonce ``\\n`` epoch
   seconds ``\\n`` content type ``\\n`` hash.
3. ``mac`` = base64(HMAC-SHA256(API key secret, string to sign)).
4. header ``Authorization: hmac OPA-Auth:{API key}:{mac}:{nonce}:{epoch}:{hash}``; PayPay rejects
   an epoch more than two minutes away from its own clock.

Every call also names the merchant with ``X-ASSUME-MERCHANT``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx

from kessai.clock import Clock, system_clock
from kessai.connectors.answers import send

AUTH_SCHEME: Final = "hmac OPA-Auth"
CONTENT_TYPE: Final = "application/json;charset=UTF-8"
EMPTY: Final = "empty"
# PayPay checks the epoch against its clock with this much tolerance.
MAX_CLOCK_SKEW_SECONDS: Final = 120
NONCE_LENGTH: Final = 8


def body_hash(content_type: str, body: bytes | None) -> str:
    """The ``hash`` part: base64(MD5(content type + body)), or ``empty`` without a body."""
    if body is None:
        return EMPTY
    # MD5 is what the protocol prescribes for this digest; it is not our choice of hash.
    digest = hashlib.md5(content_type.encode() + body, usedforsecurity=False).digest()
    return base64.b64encode(digest).decode()


def string_to_sign(
    path: str, method: str, nonce: str, epoch: int, content_type: str, hashed: str
) -> str:
    """The lines PayPay's HMAC covers, in the documented order."""
    return "\n".join([path, method.upper(), nonce, str(epoch), content_type, hashed])


def mac(api_secret: str, text: str) -> str:
    """base64(HMAC-SHA256(secret, text))."""
    digest = hmac.new(api_secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def authorization(
    api_key: str,
    api_secret: str,
    *,
    method: str,
    path: str,
    body: bytes | None,
    nonce: str,
    epoch: int,
    content_type: str = CONTENT_TYPE,
) -> str:
    """The complete ``Authorization`` header value for one request."""
    kind = content_type if body is not None else EMPTY
    hashed = body_hash(kind, body)
    signature = mac(api_secret, string_to_sign(path, method, nonce, epoch, kind, hashed))
    return f"{AUTH_SCHEME}:{api_key}:{signature}:{nonce}:{epoch}:{hashed}"


@dataclass(frozen=True, slots=True)
class ParsedAuthorization:
    """The fields of an ``Authorization`` header (used by the contract fake to verify it)."""

    api_key: str
    mac: str
    nonce: str
    epoch: int
    hash: str


def parse_authorization(value: str) -> ParsedAuthorization | None:
    """Split a header value; ``None`` when it is not an OPA-Auth header."""
    prefix = AUTH_SCHEME + ":"
    if not value.startswith(prefix):
        return None
    parts = value[len(prefix) :].split(":")
    if len(parts) != 5 or not parts[3].isdigit():
        return None
    return ParsedAuthorization(parts[0], parts[1], parts[2], int(parts[3]), parts[4])


@dataclass(frozen=True, slots=True)
class Reply:
    """What PayPay answered: HTTP status and the decoded JSON body (``None`` if not JSON)."""

    status: int
    body: dict[str, Any] | None

    @property
    def code(self) -> str:
        """``resultInfo.code``, or an empty string."""
        info = (self.body or {}).get("resultInfo")
        return str(info.get("code", "")) if isinstance(info, dict) else ""


class PayPayClient:
    """Signed calls to one merchant's PayPay account over an injected ``httpx`` client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        api_secret: str,
        merchant_id: str,
        clock: Clock = system_clock,
        nonce: Callable[[], str] | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._api_secret = api_secret
        self.merchant_id = merchant_id
        self.clock = clock
        self._nonce = nonce or (lambda: secrets.token_hex(NONCE_LENGTH // 2))

    async def call(
        self,
        method: str,
        path: str,
        *,
        payload: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        timeout_seconds: float,
    ) -> Reply:
        """One signed request. Transport errors and timeouts propagate as ``httpx`` errors."""
        body = (
            json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            if payload is not None
            else None
        )
        headers = {
            "Authorization": authorization(
                self.api_key,
                self._api_secret,
                method=method,
                path=path,
                body=body,
                nonce=self._nonce(),
                epoch=int(self.clock().timestamp()),
            ),
            "X-ASSUME-MERCHANT": self.merchant_id,
        }
        if body is not None:
            headers["Content-Type"] = CONTENT_TYPE
        response = await send(
            self.http,
            method,
            self.base_url + path,
            params=query,
            content=body,
            headers=headers,
            timeout=timeout_seconds,
        )
        try:
            decoded = json.loads(response.content)
        except ValueError:
            decoded = None
        return Reply(response.status_code, decoded if isinstance(decoded, dict) else None)
