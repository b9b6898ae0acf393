"""`kessai admin provider`: which wallet provider serves each service of a merchant.

``set`` routes a merchant's serviceId to its own account at PayPay, Alipay+ or WeChat Pay (or
back to the sandbox) and stores the account's settings; secrets are encrypted with the key from
``KESSAI_SECRET_KEY``/``KESSAI_SECRET_KEY_FILE`` and never printed again. ``list`` shows the
accounts without their secrets. Give secrets with ``--api-secret-file`` (or ``--api-secret -``
to read standard input) rather than on the command line, where other users can see them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from kessai.adapters.db import DEFAULT_DATABASE_URL
from kessai.cli import output
from kessai.cli.database import run_unit
from kessai.clock import system_clock
from kessai.connectors import routing
from kessai.connectors.secrets import SecretBox, SecretKeyInvalid
from kessai.domain.errors import InvalidRequest

provider_app = typer.Typer(
    help="Wallet providers: route a merchant's service to its PayPay, Alipay+ or WeChat Pay "
    "account, or to the sandbox.",
    no_args_is_help=True,
)

DatabaseOpt = Annotated[
    str,
    typer.Option(
        "--database", envvar="KESSAI_DATABASE_URL", help="SQLAlchemy URL or SQLite file path."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _read_secret(value: str | None, path: Path | None, as_json: bool) -> str | None:
    if value is not None and path is not None:
        message = "give --api-secret or --api-secret-file, not both"
        raise output.refused(InvalidRequest(message, field="api-secret"), as_json)
    if path is not None:
        return _read_file(path, "api-secret-file", as_json)
    if value == "-":
        return sys.stdin.read().strip()
    return value


def _read_file(path: Path | None, flag: str, as_json: bool) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as exc:
        message = f"cannot read {path}: {exc.strerror}"
        raise output.refused(InvalidRequest(message, field=flag), as_json) from exc


@provider_app.command("set")
def provider_set(
    merchant: Annotated[int, typer.Option("--merchant", help="The merchant id.")],
    service: Annotated[str, typer.Option("--service", help="The 2-digit serviceId.")],
    provider: Annotated[
        str, typer.Option("--provider", help="paypay, alipayplus, wechatpay or sandbox.")
    ],
    api_key: Annotated[
        str | None,
        typer.Option(help="PayPay API key / Alipay+ Client-Id / WeChat Pay appid."),
    ] = None,
    api_secret: Annotated[
        str | None,
        typer.Option(
            help="PayPay API secret / Alipay+ private key (PEM) / WeChat Pay API key; "
            "'-' reads standard input."
        ),
    ] = None,
    api_secret_file: Annotated[
        Path | None, typer.Option(help="Read the secret from this file instead.")
    ] = None,
    provider_merchant_id: Annotated[
        str | None,
        typer.Option(help="PayPay MERCHANT_ID / Alipay+ referenceMerchantId / WeChat Pay mch_id."),
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="The provider's API base URL.")] = None,
    provider_public_key_file: Annotated[
        Path | None, typer.Option(help="Alipay+: the Alipay+ public key (PEM) for verifying.")
    ] = None,
    key_version: Annotated[str | None, typer.Option(help="Alipay+: keyVersion.")] = None,
    merchant_mcc: Annotated[str | None, typer.Option(help="Alipay+: merchant MCC.")] = None,
    store_id: Annotated[str | None, typer.Option(help="Alipay+: referenceStoreId.")] = None,
    notify_url: Annotated[str | None, typer.Option(help="Alipay+: paymentNotifyUrl.")] = None,
    sign_type: Annotated[
        str | None, typer.Option(help="WeChat Pay: MD5 (default) or HMAC-SHA256.")
    ] = None,
    sub_merchant_id: Annotated[str | None, typer.Option(help="WeChat Pay: sub_mch_id.")] = None,
    sub_app_id: Annotated[str | None, typer.Option(help="WeChat Pay: sub_appid.")] = None,
    client_cert: Annotated[
        str | None, typer.Option(help="WeChat Pay: API client certificate (PEM path).")
    ] = None,
    client_key: Annotated[
        str | None, typer.Option(help="WeChat Pay: its private key (PEM path).")
    ] = None,
    client_ip: Annotated[
        str | None, typer.Option(help="WeChat Pay: spbill_create_ip (the terminal's IP).")
    ] = None,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Route a merchant's service to a provider account (create or update it)."""
    secret = _read_secret(api_secret, api_secret_file, as_json)
    public_key = _read_file(provider_public_key_file, "provider-public-key-file", as_json)
    options = {
        "provider_public_key": public_key,
        "key_version": key_version,
        "merchant_mcc": merchant_mcc,
        "store_id": store_id,
        "notify_url": notify_url,
        "sign_type": sign_type,
        "sub_merchant_id": sub_merchant_id,
        "sub_app_id": sub_app_id,
        "client_cert": client_cert,
        "client_key": client_key,
        "client_ip": client_ip,
    }
    given = routing.AccountInput(
        provider=provider.strip().lower(),
        api_key=api_key,
        api_secret=secret,
        provider_merchant_id=provider_merchant_id,
        base_url=base_url,
        options={k: v for k, v in options.items() if v},
    )
    try:
        box = SecretBox.from_env()
    except SecretKeyInvalid as exc:
        raise output.refused(InvalidRequest(str(exc), field="KESSAI_SECRET_KEY"), as_json) from exc
    now = system_clock()
    view = run_unit(
        database,
        lambda conn: routing.set_provider(
            conn, merchant_id=merchant, service_id=service, given=given, box=box, now=now
        ),
        as_json,
    )
    output.emit(
        view, as_json, f"serviceId {view['serviceId']} of merchant {merchant} → {_route(view)}"
    )


@provider_app.command("list")
def provider_list(
    merchant: Annotated[int, typer.Option("--merchant", help="The merchant id.")],
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Show a merchant's provider accounts (never their secrets)."""
    rows = run_unit(database, lambda conn: routing.list_providers(conn, merchant), as_json)
    lines = [
        f"{row['serviceId']}  {_route(row):<22} {'active' if row['active'] else 'inactive'}"
        for row in rows
    ]
    output.emit(
        rows, as_json, "\n".join(lines) or "no provider accounts: every service uses sandbox"
    )


def _route(view: dict[str, Any]) -> str:
    return str(view.get("route") or view.get("provider"))
