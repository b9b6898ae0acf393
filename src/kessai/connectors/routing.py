"""Routing: serviceId → the merchant's configured provider account; the sandbox by default.

A merchant configures, per serviceId, which provider serves it (``kessai admin provider set``);
the account's settings live in ``provider_settings`` with its secrets encrypted
(``kessai.connectors.secrets``). REQUEST and GET-QR-CODE decide the route inside their first
unit of work (no extra database hop) and record it on the payment as ``sandbox`` or
``<provider>:<account id>``; every later call for that payment (PAYCHECK, CANCEL, workers) finds
its account from that string.

Each real provider is one ``ProviderAccounts`` in the gateway's connector map. It builds a
connector per account on first use and keeps it for ``cache_ttl_seconds``, so settings changed by
the admin CLI in another process apply within that time (and at once to new payments, whose route
reads the current row).
"""

from __future__ import annotations

import json
import time as monotonic_time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlparse

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.repository import ProviderSettingsRow
from kessai.clock import system_clock
from kessai.connectors.alipayplus import AlipayPlusClient, AlipayPlusConnector
from kessai.connectors.alipayplus import connector as alipayplus_connector
from kessai.connectors.alipayplus.client import load_private_key, load_public_key
from kessai.connectors.base import (
    AccountUnusable,
    Connector,
    Flow,
    FlowNotSupported,
    Notification,
    NotificationRejected,
    PayRequest,
    ProviderResult,
    QrRequest,
    RefundResult,
    Schedule,
)
from kessai.connectors.paypay import PayPayClient, PayPayConnector
from kessai.connectors.paypay import connector as paypay_connector
from kessai.connectors.secrets import SecretBox, SecretKeyInvalid, SecretKeyMissing
from kessai.connectors.wechatpay import WeChatPayClient, WeChatPayConnector
from kessai.connectors.wechatpay import connector as wechatpay_connector
from kessai.connectors.wechatpay.client import SIGN_TYPES
from kessai.domain.catalog import load_catalog
from kessai.domain.errors import InvalidRequest, NotFound

SANDBOX: Final = "sandbox"
SEPARATOR: Final = ":"
# Settings changed in another process reach a running gateway within this many seconds.
ACCOUNT_CACHE_TTL_SECONDS: Final = 30.0

_FLOW_WORDS: Final[dict[Flow, tuple[str, str]]] = {
    Flow.PAY: ("payments with a customer-presented code (REQUEST)", "code"),
    Flow.CREATE_QR: ("merchant-presented QR codes (GET-QR-CODE)", "serviceId"),
    Flow.SYNC: ("payment queries", "transId"),
    Flow.CANCEL: ("cancels", "transId"),
    Flow.REFUND: ("refunds (CANCEL)", "transId"),
    Flow.REFUND_SYNC: ("refund queries", "transId"),
    Flow.NOTIFICATION: ("notifications", "body"),
}


@dataclass(frozen=True, slots=True)
class Account:
    """One merchant's account at a provider, with its secret decrypted (never logged)."""

    id: int
    merchant_id: int
    service_id: str
    provider: str
    version: int
    api_key: str
    api_secret: str = field(repr=False)
    provider_merchant_id: str
    base_url: str
    options: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """What routing needs to know about one provider."""

    name: str
    connector_class: Any
    build: Callable[[Account, httpx.AsyncClient, ProviderAccounts], Connector]
    notification_ref: Callable[[bytes], str | None]
    default_base_url: str | None
    # Options (beyond key, secret, merchant id) that must be set.
    required_options: tuple[str, ...] = ()


def _build_paypay(account: Account, http: httpx.AsyncClient, pool: ProviderAccounts) -> Connector:
    client = PayPayClient(
        http,
        base_url=account.base_url,
        api_key=account.api_key,
        api_secret=account.api_secret,
        merchant_id=account.provider_merchant_id,
        clock=pool.clock,
    )
    return PayPayConnector(client, code_ids=pool.provider_ref, clock=pool.clock)


def _build_alipayplus(
    account: Account, http: httpx.AsyncClient, pool: ProviderAccounts
) -> Connector:
    options = account.options
    client = AlipayPlusClient(
        http,
        base_url=account.base_url,
        client_id=account.api_key,
        private_key=account.api_secret,
        alipay_public_key=options["provider_public_key"],
        key_version=options.get("key_version", "1"),
        clock=pool.clock,
    )
    return AlipayPlusConnector(
        client,
        reference_merchant_id=account.provider_merchant_id,
        merchant_mcc=options.get("merchant_mcc", "5999"),
        store_id=options.get("store_id"),
        terminal_id=options.get("terminal_id"),
        notify_url=options.get("notify_url"),
        clock=pool.clock,
    )


def _build_wechatpay(
    account: Account, http: httpx.AsyncClient, pool: ProviderAccounts
) -> Connector:
    options = account.options
    tls_http = None
    if options.get("client_cert"):
        # /secapi/ calls present the merchant's API certificate (mutual TLS).
        cert = (options["client_cert"], options.get("client_key") or options["client_cert"])
        tls_http = httpx.AsyncClient(cert=cert, timeout=http.timeout)
    client = WeChatPayClient(
        http,
        base_url=account.base_url,
        app_id=account.api_key,
        mch_id=account.provider_merchant_id,
        api_key=account.api_secret,
        sign_type=options.get("sign_type", "MD5"),
        sub_mch_id=options.get("sub_merchant_id"),
        sub_app_id=options.get("sub_app_id"),
        tls_http=tls_http,
    )
    return WeChatPayConnector(client, client_ip=options.get("client_ip", "127.0.0.1"))


PROVIDERS: Final[dict[str, ProviderKind]] = {
    "paypay": ProviderKind(
        "paypay",
        PayPayConnector,
        _build_paypay,
        paypay_connector.notification_ref,
        "https://apigw.paypay.ne.jp",
    ),
    "alipayplus": ProviderKind(
        "alipayplus",
        AlipayPlusConnector,
        _build_alipayplus,
        alipayplus_connector.notification_ref,
        None,
        ("provider_public_key",),
    ),
    "wechatpay": ProviderKind(
        "wechatpay",
        WeChatPayConnector,
        _build_wechatpay,
        wechatpay_connector.notification_ref,
        "https://apihk.mch.weixin.qq.com",
    ),
}


def account_of(provider: str) -> tuple[str, int | None]:
    """Split a payment's ``provider`` column into (provider kind, account id)."""
    kind, _, account = provider.partition(SEPARATOR)
    return kind, int(account) if account.isdigit() else None


def choose(
    row: ProviderSettingsRow | None,
    service_id: str,
    flow: Flow,
    connectors: Mapping[str, Connector],
    *,
    sandbox: bool = True,
) -> str:
    """The connector name for a payment, given the merchant's active account for the service.

    ``row`` is that account (None: the merchant has none, and the sandbox serves the service
    when ``sandbox`` is on). Raises ``FlowNotSupported`` when the configured provider lacks
    ``flow``, and ``AccountUnusable`` when its account cannot be used or there is none and the
    sandbox is off; either way no payment is written.
    """
    kind = SANDBOX if row is None else str(row.provider)
    if kind == SANDBOX and not sandbox:
        # Routed there by default or by an account set to the sandbox: either way its codes
        # would complete payments without moving money.
        whose = "no provider account" if row is None else "its account on the sandbox"
        raise AccountUnusable(
            f"the merchant has {whose} for serviceId {service_id}, and the sandbox wallets "
            "are turned off",
            field="serviceId",
        )
    connector = connectors.get(kind)
    if connector is None:
        raise AccountUnusable(
            f"serviceId {service_id} is routed to {kind}, which this gateway does not run",
            field="serviceId",
        )
    # Test doubles written against the first version of the interface have no ``flows``;
    # they offer every flow they are asked for.
    flows: frozenset[Flow] | None = getattr(connector, "flows", None)
    if flows is not None and flow not in flows:
        words, where = _FLOW_WORDS[flow]
        reasons: Mapping[Flow, str] = getattr(connector, "not_supported", {})
        reason = reasons.get(flow)
        raise FlowNotSupported(
            f"{kind} does not offer {words} for serviceId {service_id}"
            + (f": {reason}" if reason else ""),
            field=where,
        )
    if row is None or kind == SANDBOX:
        return SANDBOX
    if isinstance(connector, ProviderAccounts):
        connector.prepare(row)
    return f"{kind}{SEPARATOR}{row.id}"


@dataclass(slots=True)
class _Entry:
    connector: Connector
    version: int
    loaded_at: float


class ProviderAccounts:
    """Every merchant account of one provider, as a connector (``for_account`` picks one).

    Called without an account, it finds the account from the payment's recorded route; that
    costs one database read, which ``for_account`` (what the gateway uses) avoids.
    """

    def __init__(
        self,
        kind: ProviderKind,
        db: Database,
        http: httpx.AsyncClient,
        box: SecretBox | None,
        *,
        cache_ttl_seconds: float = ACCOUNT_CACHE_TTL_SECONDS,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.kind = kind
        self.name: str = kind.name
        self.schedule: Schedule = kind.connector_class.schedule
        self.flows: frozenset[Flow] = kind.connector_class.flows
        self.not_supported: Mapping[Flow, str] = kind.connector_class.not_supported
        self.db = db
        self.http = http
        self.box = box
        self.clock = clock or system_clock
        self.cache_ttl_seconds = cache_ttl_seconds
        self._cache: dict[int, _Entry] = {}

    # -- accounts ------------------------------------------------------------------------------

    def prepare(self, row: ProviderSettingsRow) -> Connector:
        """The connector of a settings row, built (and cached) unless the cache is current."""
        now = monotonic_time.monotonic()
        entry = self._cache.get(int(row.id))
        if entry is not None and entry.version == int(row.version):
            entry.loaded_at = now
            return entry.connector
        account = self._account(row)
        try:
            connector = self.kind.build(account, self.http, self)
        except (ValueError, KeyError) as exc:
            raise AccountUnusable(
                f"the {self.name} account of serviceId {account.service_id} is misconfigured: "
                f"{exc}",
                field="serviceId",
            ) from exc
        self._cache[account.id] = _Entry(connector, account.version, now)
        return connector

    def _account(self, row: ProviderSettingsRow) -> Account:
        secret = ""
        if row.secret_ciphertext:
            if self.box is None:
                raise AccountUnusable(
                    f"the {self.name} account of serviceId {row.service_id} has an encrypted "
                    f"secret, but {SecretKeyMissing()}",
                    field="serviceId",
                )
            try:
                secret = self.box.decrypt(str(row.secret_ciphertext), row.secret_key_id)
            except SecretKeyInvalid as exc:
                raise AccountUnusable(str(exc), field="serviceId") from exc
        options = json.loads(row.options) if row.options else {}
        return Account(
            id=int(row.id),
            merchant_id=int(row.merchant_id),
            service_id=str(row.service_id),
            provider=str(row.provider),
            version=int(row.version),
            api_key=str(row.api_key or ""),
            api_secret=secret,
            provider_merchant_id=str(row.provider_merchant_id or ""),
            base_url=str(row.base_url or self.kind.default_base_url or ""),
            options={str(k): str(v) for k, v in options.items()},
        )

    async def connector_for(self, account_id: int) -> Connector:
        """The connector of one account: cached, or loaded with one read."""
        entry = self._cache.get(account_id)
        if entry is not None and (
            monotonic_time.monotonic() - entry.loaded_at < self.cache_ttl_seconds
        ):
            return entry.connector

        def unit(conn: Connection) -> Connector:
            row = conn.execute(
                sa.select(t.provider_settings).where(t.provider_settings.c.id == account_id)
            ).first()
            if row is None or str(row.provider) != self.name:
                raise AccountUnusable(f"{self.name} account {account_id} no longer exists")
            return self.prepare(row)

        return await self.db.run(unit, write=False)

    async def provider_ref(self, ref: str) -> str | None:
        """What the gateway stored as the payment's provider_ref (PayPay: the QR's codeId)."""

        def unit(conn: Connection) -> str | None:
            value = conn.execute(
                sa.select(t.payments.c.provider_ref).where(t.payments.c.trans_id == ref)
            ).scalar_one_or_none()
            return None if value is None else str(value)

        return await self.db.run(unit, write=False)

    async def _by_ref(self, ref: str) -> Connector:
        def unit(conn: Connection) -> str | None:
            value = conn.execute(
                sa.select(t.payments.c.provider).where(t.payments.c.trans_id == ref)
            ).scalar_one_or_none()
            return None if value is None else str(value)

        recorded = await self.db.run(unit, write=False)
        kind, account = account_of(recorded or "")
        if kind != self.name or account is None:
            raise NotFound(f"no {self.name} payment with transId {ref}", field="transId")
        return await self.connector_for(account)

    # -- the connector interface -------------------------------------------------------------

    def for_account(self, account: str) -> Connector:
        """The connector of account ``account`` (the id after ``kind:`` in a route)."""
        if not account.isdigit():
            raise AccountUnusable(f"{self.name} account {account!r} is not an account id")
        return _AccountConnector(self, int(account))

    async def pay(self, request: PayRequest) -> ProviderResult:
        """Charge a customer code with the payment's account."""
        return await (await self._by_ref(request.ref)).pay(request)

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        """Create a QR code with the payment's account."""
        return await (await self._by_ref(request.ref)).create_qr(request)

    async def sync(self, ref: str) -> ProviderResult:
        """Query with the payment's account."""
        return await (await self._by_ref(ref)).sync(ref)

    async def cancel(self, ref: str) -> ProviderResult:
        """Cancel with the payment's account."""
        return await (await self._by_ref(ref)).cancel(ref)

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Refund with the payment's account."""
        return await (await self._by_ref(ref)).refund(ref, refund_ref, amount)

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        """Query a refund with the payment's account."""
        return await (await self._by_ref(ref)).refund_sync(ref, refund_ref, amount)

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        """Find the payment a notification is about, then verify it with that account's keys."""
        if Flow.NOTIFICATION not in self.flows:
            raise FlowNotSupported(
                self.not_supported.get(Flow.NOTIFICATION, f"{self.name} sends no notifications")
            )
        ref = self.kind.notification_ref(body)
        if ref is None:
            raise NotificationRejected("body", f"not a {self.name} payment notification")
        try:
            connector = await self._by_ref(ref)
        except NotFound as exc:
            raise NotificationRejected("payment", f"no {self.name} payment {ref}") from exc
        return await connector.parse_notification(path, headers, body)


class _AccountConnector:
    """One account of a ``ProviderAccounts``; resolves its connector lazily (cached)."""

    def __init__(self, pool: ProviderAccounts, account_id: int) -> None:
        self.pool = pool
        self.account_id = account_id
        self.name = pool.name
        self.schedule = pool.schedule
        self.flows = pool.flows

    def for_account(self, account: str) -> Connector:
        return self.pool.for_account(account)

    async def _connector(self) -> Connector:
        return await self.pool.connector_for(self.account_id)

    async def pay(self, request: PayRequest) -> ProviderResult:
        return await (await self._connector()).pay(request)

    async def create_qr(self, request: QrRequest) -> ProviderResult:
        return await (await self._connector()).create_qr(request)

    async def sync(self, ref: str) -> ProviderResult:
        return await (await self._connector()).sync(ref)

    async def cancel(self, ref: str) -> ProviderResult:
        return await (await self._connector()).cancel(ref)

    async def refund(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        return await (await self._connector()).refund(ref, refund_ref, amount)

    async def refund_sync(self, ref: str, refund_ref: str, amount: int) -> RefundResult:
        return await (await self._connector()).refund_sync(ref, refund_ref, amount)

    async def parse_notification(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> Notification:
        return await (await self._connector()).parse_notification(path, headers, body)


def build_connectors(
    db: Database,
    http: httpx.AsyncClient,
    box: SecretBox | None,
    sandbox: Connector,
    *,
    clock: Callable[[], datetime] | None = None,
) -> dict[str, Connector]:
    """The gateway's connector map: the sandbox and one ``ProviderAccounts`` per provider."""
    connectors: dict[str, Connector] = {SANDBOX: sandbox}
    for name, kind in PROVIDERS.items():
        connectors[name] = ProviderAccounts(kind, db, http, box, clock=clock)
    return connectors


# -- settings (the admin CLI) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountInput:
    """What ``kessai admin provider set`` was given (``None``: keep the stored value)."""

    provider: str
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    provider_merchant_id: str | None = None
    base_url: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)


def set_provider(
    conn: Connection,
    *,
    merchant_id: int,
    service_id: str,
    given: AccountInput,
    box: SecretBox | None,
    now: datetime,
) -> dict[str, Any]:
    """Route ``service_id`` of a merchant to a provider account, creating or updating it.

    ``sandbox`` deactivates the merchant's accounts for the service. Secrets are stored only
    encrypted; without a key they are refused. Answers the account as ``provider list`` shows
    it (never with its secret).
    """
    service = load_catalog().require(service_id)
    merchant = conn.execute(
        sa.select(t.merchants.c.id).where(t.merchants.c.id == merchant_id)
    ).first()
    if merchant is None:
        raise InvalidRequest(f"no merchant {merchant_id}", field="merchant")
    provider = given.provider
    if provider not in (SANDBOX, service.provider) or (
        provider != SANDBOX and provider not in PROVIDERS
    ):
        allowed = SANDBOX if service.provider not in PROVIDERS else f"{service.provider} or sandbox"
        raise InvalidRequest(
            f"serviceId {service.service_id} ({service.name}) can be served by {allowed}, "
            f"not {provider}",
            field="provider",
        )
    table = t.provider_settings
    others = table.c.merchant_id == merchant_id, table.c.service_id == service.service_id
    if provider == SANDBOX:
        conn.execute(table.update().where(*others).values(active=False, updated_at=now))
        return {"merchantId": merchant_id, "serviceId": service.service_id, "provider": SANDBOX}
    kind = PROVIDERS[provider]
    existing = conn.execute(sa.select(table).where(*others, table.c.provider == provider)).first()
    values = _values(kind, given, existing, box)
    conn.execute(
        table.update()
        .where(*others, table.c.provider != provider)
        .values(active=False, updated_at=now)
    )
    if existing is None:
        pk = conn.execute(
            table.insert().values(
                merchant_id=merchant_id,
                service_id=service.service_id,
                provider=provider,
                active=True,
                version=1,
                created_at=now,
                updated_at=now,
                **values,
            )
        ).inserted_primary_key
        assert pk is not None
        account_id = int(pk[0])
    else:
        account_id = int(existing.id)
        conn.execute(
            table.update()
            .where(table.c.id == account_id)
            .values(active=True, version=int(existing.version) + 1, updated_at=now, **values)
        )
    row = conn.execute(sa.select(table).where(table.c.id == account_id)).one()
    return public_view(row)


def _values(
    kind: ProviderKind, given: AccountInput, existing: sa.Row[Any] | None, box: SecretBox | None
) -> dict[str, Any]:
    """The stored columns after applying ``given`` over ``existing``, validated."""
    old_options = json.loads(existing.options) if existing is not None and existing.options else {}
    options = {**old_options, **{k: v for k, v in given.options.items() if v}}
    api_key = given.api_key or (existing.api_key if existing is not None else None)
    merchant = given.provider_merchant_id or (
        existing.provider_merchant_id if existing is not None else None
    )
    base_url = given.base_url or (existing.base_url if existing is not None else None)
    has_secret = given.api_secret is not None or (
        existing is not None and existing.secret_ciphertext is not None
    )
    missing = [
        flag
        for flag, value in (
            ("--api-key", api_key),
            ("--api-secret", has_secret),
            ("--provider-merchant-id", merchant),
            ("--base-url", base_url or kind.default_base_url),
        )
        if not value
    ] + [f"--{name.replace('_', '-')}" for name in kind.required_options if not options.get(name)]
    if missing:
        raise InvalidRequest(
            f"{kind.name} needs {', '.join(missing)}", field=missing[0].lstrip("-")
        )
    if base_url is not None:
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidRequest("--base-url must be an http(s) URL", field="base-url")
    _check_options(kind, options, given.api_secret)
    values: dict[str, Any] = {
        "api_key": api_key,
        "provider_merchant_id": merchant,
        "base_url": base_url,
        "options": json.dumps(options, sort_keys=True) if options else None,
    }
    if given.api_secret is not None:
        if box is None:
            raise InvalidRequest(
                f"refusing to store a provider secret unencrypted: {SecretKeyMissing()}",
                field="api-secret",
            )
        values["secret_ciphertext"] = box.encrypt(given.api_secret)
        values["secret_key_id"] = box.key_id
    return values


def _check_options(kind: ProviderKind, options: Mapping[str, str], secret: str | None) -> None:
    """Catch malformed keys when they are set, not at the first payment."""
    try:
        if kind.name == "alipayplus":
            load_public_key(options["provider_public_key"])
            if secret is not None:
                load_private_key(secret)
    except ValueError as exc:
        raise InvalidRequest(f"alipayplus: {exc}", field="api-secret") from exc
    if kind.name == "wechatpay" and options.get("sign_type", "MD5") not in SIGN_TYPES:
        raise InvalidRequest(
            f"--sign-type must be one of {', '.join(SIGN_TYPES)}", field="sign-type"
        )


def list_providers(conn: Connection, merchant_id: int) -> list[dict[str, Any]]:
    """A merchant's provider accounts, without secrets."""
    rows = conn.execute(
        sa.select(t.provider_settings)
        .where(t.provider_settings.c.merchant_id == merchant_id)
        .order_by(t.provider_settings.c.service_id, t.provider_settings.c.id)
    ).all()
    return [public_view(row) for row in rows]


def public_view(row: sa.Row[Any]) -> dict[str, Any]:
    """An account as the CLI shows it: identifiers in full, the secret only as a fact."""
    options = json.loads(row.options) if row.options else {}
    if "provider_public_key" in options:
        options["provider_public_key"] = "(set)"
    return {
        "account": int(row.id),
        "merchantId": int(row.merchant_id),
        "serviceId": str(row.service_id),
        "provider": str(row.provider),
        "active": bool(row.active),
        "route": f"{row.provider}{SEPARATOR}{row.id}",
        "apiKey": row.api_key,
        "providerMerchantId": row.provider_merchant_id,
        "baseUrl": row.base_url or PROVIDERS[str(row.provider)].default_base_url,
        "hasSecret": row.secret_ciphertext is not None,
        "secretKeyId": row.secret_key_id,
        "options": options,
        "version": int(row.version),
    }
