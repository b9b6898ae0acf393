"""WeChat Pay API v2: HTTP plumbing, the XML wire format and the MD5 / HMAC-SHA256 signature.

The signature, as WeChat Pay documents it (pay.weixin.qq.com, "安全规范" / "Signature
Algorithm" of the v2 API, with its worked example):

1. take every non-empty parameter except ``sign``, sort by name (ASCII), join as
   ``k1=v1&k2=v2…``;
2. append ``&key=<API key>``;
3. ``sign`` = upper-case hex of MD5 of that string, or of HMAC-SHA256 keyed with the API key when
   ``sign_type`` is ``HMAC-SHA256``.

Requests and answers are XML documents ``<xml><name>value</name>…</xml>``. Answers with
``return_code`` SUCCESS are signed the same way and verified here. ``/secapi/`` endpoints
(reverse, refund) need the merchant's API client certificate (mutual TLS) in production: they go
through ``tls_http``, an ``httpx`` client built with that certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

# DTDs are refused before anything is parsed (see parse_xml), so no entity is ever expanded.
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape

import httpx

from kessai.connectors.answers import send

MD5: Final = "MD5"
HMAC_SHA256: Final = "HMAC-SHA256"
SIGN_TYPES: Final = (MD5, HMAC_SHA256)
CONTENT_TYPE: Final = "text/xml; charset=utf-8"
NONCE_BYTES: Final = 16
# Answers larger than this are not WeChat Pay answers.
MAX_XML_BYTES: Final = 64 * 1024


def sign_string(params: Mapping[str, str], key: str) -> str:
    """``k1=v1&k2=v2…&key=<API key>`` over the non-empty parameters except ``sign``."""
    pairs = [f"{name}={params[name]}" for name in sorted(params) if name != "sign" and params[name]]
    return "&".join([*pairs, f"key={key}"])


def sign(params: Mapping[str, str], key: str, sign_type: str = MD5) -> str:
    """The ``sign`` value of ``params``."""
    text = sign_string(params, key).encode()
    if sign_type == HMAC_SHA256:
        return hmac.new(key.encode(), text, hashlib.sha256).hexdigest().upper()
    if sign_type == MD5:
        # MD5 is the protocol's default digest, prescribed by WeChat Pay, not chosen by us.
        return hashlib.md5(text, usedforsecurity=False).hexdigest().upper()
    raise ValueError(f"sign_type must be one of {', '.join(SIGN_TYPES)}")


def signature_holds(params: Mapping[str, str], key: str, sign_type: str = MD5) -> bool:
    """Whether ``params['sign']`` is the signature of ``params``."""
    given = params.get("sign", "")
    return bool(given) and hmac.compare_digest(given.upper(), sign(params, key, sign_type))


def to_xml(params: Mapping[str, str]) -> str:
    """``<xml><name>value</name>…</xml>`` (values escaped)."""
    items = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in params.items())
    return f"<xml>{items}</xml>"


def parse_xml(data: bytes) -> dict[str, str] | None:
    """The fields of a flat ``<xml>`` document; ``None`` when it is not one.

    Documents with a DTD are refused outright, so no entity is ever expanded (XXE).
    """
    if len(data) > MAX_XML_BYTES or b"<!DOCTYPE" in data.upper() or b"<!ENTITY" in data.upper():
        return None
    try:
        root = ET.fromstring(data)  # noqa: S314 -- DTDs refused above
    except ET.ParseError:
        return None
    if root.tag != "xml":
        return None
    return {child.tag: (child.text or "").strip() for child in root}


def new_nonce() -> str:
    """A random ``nonce_str`` (32 hex characters, the documented maximum length)."""
    return secrets.token_hex(NONCE_BYTES)


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer: HTTP status, its fields, and whether its signature held (when it had one)."""

    status: int
    fields: dict[str, str] | None
    verified: bool

    def get(self, name: str) -> str:
        """One field, or an empty string."""
        return (self.fields or {}).get(name, "")


class WeChatPayClient:
    """Signed XML calls for one WeChat Pay merchant (or sub-merchant of an institution)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        app_id: str,
        mch_id: str,
        api_key: str,
        sign_type: str = MD5,
        sub_mch_id: str | None = None,
        sub_app_id: str | None = None,
        tls_http: httpx.AsyncClient | None = None,
        nonce: Callable[[], str] = new_nonce,
    ) -> None:
        if sign_type not in SIGN_TYPES:
            raise ValueError(f"sign_type must be one of {', '.join(SIGN_TYPES)}")
        self.http = http
        # /secapi/ calls need the API client certificate; without one they use the plain client
        # (enough for the contract fake, refused by WeChat Pay in production).
        self.tls_http = tls_http or http
        self.base_url = base_url.rstrip("/")
        self.app_id = app_id
        self.mch_id = mch_id
        self._api_key = api_key
        self.sign_type = sign_type
        self.sub_mch_id = sub_mch_id
        self.sub_app_id = sub_app_id
        self._nonce = nonce

    def signed(self, fields: Mapping[str, str]) -> dict[str, str]:
        """``fields`` with the account's ids, a nonce, the sign type and the signature."""
        params = {"appid": self.app_id, "mch_id": self.mch_id, "nonce_str": self._nonce()}
        if self.sub_mch_id:
            params["sub_mch_id"] = self.sub_mch_id
        if self.sub_app_id:
            params["sub_appid"] = self.sub_app_id
        if self.sign_type != MD5:
            params["sign_type"] = self.sign_type
        params.update({name: value for name, value in fields.items() if value})
        params["sign"] = sign(params, self._api_key, self.sign_type)
        return params

    def verify(self, fields: Mapping[str, str]) -> bool:
        """Whether an answer (or a message) WeChat Pay signed holds with our key."""
        return signature_holds(fields, self._api_key, self.sign_type)

    async def call(
        self, path: str, fields: Mapping[str, str], *, timeout_seconds: float, tls: bool = False
    ) -> Reply:
        """POST one signed XML request; transport errors propagate as ``httpx`` errors."""
        client = self.tls_http if tls else self.http
        response = await send(
            client,
            "POST",
            self.base_url + path,
            content=to_xml(self.signed(fields)).encode(),
            headers={"Content-Type": CONTENT_TYPE},
            timeout=timeout_seconds,
            # Reading stops where an answer stops being a WeChat Pay answer, not at the limit
            # every provider shares: a longer one would only be refused by parse_xml.
            limit=MAX_XML_BYTES,
        )
        parsed = parse_xml(response.content)
        if parsed is None:
            return Reply(response.status_code, None, False)
        # Only SUCCESS answers carry a signature; a FAIL answer says the request was refused.
        verified = parsed.get("return_code") != "SUCCESS" or self.verify(parsed)
        return Reply(response.status_code, parsed, verified)
