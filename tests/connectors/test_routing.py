"""Provider settings: the admin CLI, encryption at rest, and routing serviceId → account."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from kessai.adapters import schema as t
from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.cli.main import app
from kessai.connectors import routing
from kessai.connectors.base import AccountUnusable, Flow, FlowNotSupported
from kessai.connectors.secrets import (
    SecretBox,
    SecretKeyInvalid,
    SecretKeyMissing,
    generate_key,
)
from kessai.service import admin

from .fakes.alipayplus import new_key, private_pem, public_pem
from .reference import route_by_own_read

KEY = generate_key()
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
runner = CliRunner()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'k.db'}"


@pytest.fixture
def merchant(db_url: str) -> int:
    db = Database(db_url)
    try:
        upgrade(db)
        return int(db.run_sync(lambda conn: admin.create_merchant(conn, "Shop", NOW)))
    finally:
        db.close()


def cli(db_url: str, *args: str, key: str | None = KEY, stdin: str | None = None) -> Any:
    env = {"KESSAI_SECRET_KEY": key or "", "KESSAI_SECRET_KEY_FILE": ""}
    result = runner.invoke(
        app, ["admin", "provider", *args, "--database", db_url, "--json"], env=env, input=stdin
    )
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def rows(db_url: str) -> list[Any]:
    db = Database(db_url)
    try:
        return db.run_sync(lambda conn: conn.execute(sa.select(t.provider_settings)).all())
    finally:
        db.close()


# -- secrets ------------------------------------------------------------------------------------


def test_secrets_round_trip_and_rotate() -> None:
    old, new = generate_key(), generate_key()
    token = SecretBox([old]).encrypt("s3cret")
    assert "s3cret" not in token
    rotated = SecretBox([new, old])
    assert rotated.decrypt(token) == "s3cret"
    assert rotated.key_id != SecretBox([old]).key_id
    with pytest.raises(SecretKeyInvalid, match="stored with key"):
        SecretBox([new]).decrypt(token, SecretBox([old]).key_id)


def test_the_key_comes_from_the_environment_or_a_file(tmp_path: Path) -> None:
    assert SecretBox.from_env({}) is None
    assert SecretBox.from_env({"KESSAI_SECRET_KEY": KEY}) is not None
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    from_file = SecretBox.from_env({"KESSAI_SECRET_KEY_FILE": str(path)})
    assert from_file is not None and from_file.key_id == SecretBox([KEY]).key_id
    with pytest.raises(SecretKeyInvalid, match="32-byte"):
        SecretBox.from_env({"KESSAI_SECRET_KEY": "too-short"})
    with pytest.raises(SecretKeyInvalid, match="cannot be read"):
        SecretBox.from_env({"KESSAI_SECRET_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(SecretKeyMissing):
        SecretBox([])


# -- the CLI ------------------------------------------------------------------------------------


def test_set_paypay_stores_the_secret_encrypted_and_never_shows_it(
    db_url: str, merchant: int, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("APIKeySecretGenerated\n")
    code, view = cli(
        db_url,
        "set",
        "--merchant",
        str(merchant),
        "--service",
        "01",
        "--provider",
        "paypay",
        "--api-key",
        "APIKeyGenerated",
        "--api-secret-file",
        str(secret_file),
        "--provider-merchant-id",
        "MERCHANT_1",
        "--base-url",
        "http://127.0.0.1:9",
    )
    assert code == 0, view
    assert view["route"] == f"paypay:{view['account']}"
    assert view["hasSecret"] is True
    assert "APIKeySecretGenerated" not in json.dumps(view)
    (row,) = rows(db_url)
    assert "APIKeySecretGenerated" not in row.secret_ciphertext
    assert SecretBox([KEY]).decrypt(row.secret_ciphertext) == "APIKeySecretGenerated"
    code, listed = cli(db_url, "list", "--merchant", str(merchant))
    assert code == 0 and listed == [view]
    # Updating a non-secret field keeps the secret and bumps the version.
    code, again = cli(
        db_url,
        "set",
        "--merchant",
        str(merchant),
        "--service",
        "01",
        "--provider",
        "paypay",
        "--base-url",
        "http://127.0.0.1:10",
    )
    assert code == 0 and again["version"] == 2 and again["hasSecret"]


def test_a_secret_is_refused_without_a_key(db_url: str, merchant: int) -> None:
    code, answer = cli(
        db_url,
        "set",
        "--merchant",
        str(merchant),
        "--service",
        "21",
        "--provider",
        "wechatpay",
        "--api-key",
        "wx1",
        "--api-secret",
        "-",
        "--provider-merchant-id",
        "10000100",
        key=None,
        stdin="192006250b4c09247ec02edce69f6a2d\n",
    )
    assert code == 2
    assert "KESSAI_SECRET_KEY" in answer["error"]["message"]
    assert rows(db_url) == []


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--service", "01", "--provider", "wechatpay"], "provider"),
        (["--service", "02", "--provider", "paypay"], "provider"),
        (["--service", "99", "--provider", "paypay"], "serviceId"),
        (["--service", "01", "--provider", "paypay", "--api-key", "k"], "api-secret"),
        (
            [
                "--service",
                "20",
                "--provider",
                "alipayplus",
                "--api-key",
                "C",
                "--api-secret",
                "x",
                "--provider-merchant-id",
                "M",
                "--base-url",
                "http://h",
            ],
            "provider-public-key",
        ),
    ],
    ids=["wrong-provider", "no-connector", "unknown-service", "missing-secret", "missing-key"],
)
def test_bad_settings_are_refused_clearly(
    db_url: str, merchant: int, args: list[str], field: str
) -> None:
    code, answer = cli(db_url, "set", "--merchant", str(merchant), *args)
    assert code == 2
    assert answer["error"]["field"] == field
    assert rows(db_url) == []


def test_alipay_keys_are_checked_when_set(db_url: str, merchant: int, tmp_path: Path) -> None:
    public = tmp_path / "alipay.pem"
    public.write_text(public_pem(new_key()))
    private = tmp_path / "ours.pem"
    private.write_text("not a key")
    base = [
        "set",
        "--merchant",
        str(merchant),
        "--service",
        "20",
        "--provider",
        "alipayplus",
        "--api-key",
        "CLIENT",
        "--provider-merchant-id",
        "M1",
        "--base-url",
        "http://h",
        "--provider-public-key-file",
        str(public),
    ]
    code, answer = cli(db_url, *base, "--api-secret-file", str(private))
    assert code == 2 and "private key" in answer["error"]["message"]
    private.write_text(private_pem(new_key()))
    code, view = cli(db_url, *base, "--api-secret-file", str(private))
    assert code == 0 and view["options"]["provider_public_key"] == "(set)"


# -- routing ------------------------------------------------------------------------------------


class _Stub:
    def __init__(self, flows: frozenset[Flow]) -> None:
        self.flows = flows


def test_routing_picks_the_active_account_and_refuses_missing_flows(
    db_url: str, merchant: int
) -> None:
    db = Database(db_url)
    box = SecretBox([KEY])
    http = httpx.AsyncClient()
    connectors = routing.build_connectors(db, http, box, _Stub(frozenset(Flow)))  # type: ignore[arg-type]
    try:
        sandbox = db.run_sync(
            lambda c: route_by_own_read(c, merchant, "01", Flow.CREATE_QR, connectors)
        )
        assert sandbox == "sandbox"
        view = db.run_sync(
            lambda c: routing.set_provider(
                c,
                merchant_id=merchant,
                service_id="01",
                given=routing.AccountInput("paypay", "K", "S", "MERCHANT_1", "http://127.0.0.1:9"),
                box=box,
                now=NOW,
            )
        )
        name = db.run_sync(
            lambda c: route_by_own_read(c, merchant, "01", Flow.CREATE_QR, connectors)
        )
        assert name == view["route"] == f"paypay:{view['account']}"
        with pytest.raises(FlowNotSupported, match="store scan"):
            db.run_sync(lambda c: route_by_own_read(c, merchant, "01", Flow.PAY, connectors))
        # Without the key the account is unusable, and says why.
        keyless = routing.build_connectors(db, http, None, _Stub(frozenset(Flow)))  # type: ignore[arg-type]
        with pytest.raises(AccountUnusable, match="KESSAI_SECRET_KEY"):
            db.run_sync(lambda c: route_by_own_read(c, merchant, "01", Flow.CREATE_QR, keyless))
        # Back to the sandbox: the account stays (old payments name it) but is inactive.
        db.run_sync(
            lambda c: routing.set_provider(
                c,
                merchant_id=merchant,
                service_id="01",
                given=routing.AccountInput("sandbox"),
                box=box,
                now=NOW,
            )
        )
        again = db.run_sync(lambda c: route_by_own_read(c, merchant, "01", Flow.PAY, connectors))
        assert again == "sandbox"
        assert routing.account_of(name) == ("paypay", view["account"])
        assert routing.account_of("sandbox") == ("sandbox", None)
    finally:
        db.close()


@pytest.mark.parametrize("account", [None, "sandbox"])
def test_with_the_sandbox_off_nothing_is_routed_there(account: str | None) -> None:
    # Neither by default (no account) nor by an account that names the sandbox: its codes
    # would complete payments without moving money.
    row = None if account is None else SimpleNamespace(provider=account, id=7)
    connectors: dict[str, Any] = {"sandbox": _Stub(frozenset(Flow))}
    assert routing.choose(row, "01", Flow.PAY, connectors) == "sandbox"  # type: ignore[arg-type]
    with pytest.raises(AccountUnusable, match="sandbox wallets are turned off"):
        routing.choose(row, "01", Flow.PAY, connectors, sandbox=False)  # type: ignore[arg-type]
