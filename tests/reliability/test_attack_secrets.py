"""After a representative day, no secret is in clear in the database files or the server's log.

An insider who copies the database (its file and write-ahead log) or reads the logs must learn no
password, passCode, session token, provider secret, webhook secret, master key or full customer
code. A real `kessai serve` runs with its log at DEBUG and its background jobs on, and does a day's
work: wrong and right LOGINs, LOGOUT and LOGIN again, payments with customer codes through WeChat
Pay and Alipay+ (contract fakes holding the merchant's API secrets), a PayPay QR payment settled by
PayPay's notification, an Alipay+ notification, sandbox payments of every kind, refunds with
passCodes (wrong ones too), voucher numbers, console logins (a wrong one too) and a console
edit, and webhooks delivered to the merchant. Provider accounts and the webhook endpoint are set
with `kessai admin` like an operator would. Then the database files and the log are scanned for
every secret of the day, as it is and in simple encodings (tests/reliability/secret_scan.py).

The scan proves itself twice: the scanner finds each encoding it claims when it is planted in
noise, and a marker the day wrote on purpose (as a voucher number, and in a logged request path)
is found in the same database files and log that are then found clean.

tests/integration/test_secrets_at_rest.py does this in-process for the core flows; this runs the
real server with the providers, webhooks, console and logs.
"""

from __future__ import annotations

import base64
import secrets as random_secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.fakes.alipayplus import AlipayPlusFake, private_pem, public_pem
from connectors.fakes.paypay import PayPayFake
from connectors.fakes.server import Answer, FakeServer
from connectors.fakes.wechatpay import APP_ID, MCH_ID, WeChatPayFake
from e2e.support import FAST_SETTINGS, Pos, Terminal, sandbox_code, start_server
from kessai.connectors.secrets import generate_key
from kessai.webhooks import verify

from .attack_support import Admin, console_login, sqlite_file
from .secret_scan import Finding, forms_of, scan, scan_files

pytestmark = pytest.mark.e2e


class Receiver:
    """The merchant's webhook endpoint: keeps every delivery, answers 200."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.deliveries: list[tuple[dict[str, str], bytes]] = []

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> Answer:
        with self.lock:
            self.deliveries.append((headers, body))
        return 200, {"content-type": "text/plain"}, b"ok", 0.0


@dataclass
class Day:
    """What the day left behind, and every secret it used."""

    database_files: list[Path]
    logs: list[Path]
    secrets: dict[str, str] = field(default_factory=dict)
    passcodes: set[str] = field(default_factory=set)
    marker: str = ""
    running_copies: dict[str, bytes] = field(default_factory=dict)


def _digits(count: int) -> str:
    return "".join(str(random_secrets.randbelow(10)) for _ in range(count))


def _passcode() -> str:
    while True:
        value = _digits(4)
        # Not a run like 0000 or 1234, which could sit next to "passcode" in text by chance.
        if len(set(value)) == 4:
            return value


def _password() -> str:
    return "W" + random_secrets.token_hex(6)[:11]  # 12 letters or digits


def _wait(predicate: Any, what: str, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Day]:
    workdir = tmp_path_factory.mktemp("secrets")
    files = tmp_path_factory.mktemp("operator-files")  # the operator's own files: not scanned
    master_key = generate_key()
    wechat_key = random_secrets.token_hex(16)
    paypay_secret = "PP" + random_secrets.token_urlsafe(24)
    wechat, paypay, alipay, receiver = (
        WeChatPayFake(key=wechat_key),
        PayPayFake(api_secret=paypay_secret),
        AlipayPlusFake(),
        Receiver(),
    )
    servers = [FakeServer(fake).start() for fake in (wechat, paypay, alipay, receiver)]
    settings = {
        **FAST_SETTINGS,
        "KESSAI_SECRET_KEY": master_key,
        "KESSAI_LOG_LEVEL": "DEBUG",
        "KESSAI_WORKER_IN_SERVE": "true",
        "KESSAI_WORKER_IDLE_SLEEP_MS": "100",
        "KESSAI_WEBHOOK_FIRST_RETRY_SECONDS": "1",
    }
    server = start_server(workdir, settings)
    database = sqlite_file(server.database_url)
    found = Day(
        database_files=[database, Path(f"{database}-wal"), Path(f"{database}-shm")],
        logs=sorted(workdir.glob("server-*.log")),
    )
    secrets = found.secrets
    secrets["master key"] = master_key
    secrets["WeChat Pay API key"] = wechat_key
    secrets["PayPay API secret"] = paypay_secret
    pem = private_pem(alipay.acquirer_key)
    for n, line in enumerate(pem.splitlines()[3:6]):
        secrets[f"Alipay+ private key, line {n + 4}"] = line
    try:
        _work(
            server.base_url,
            server.database_url,
            Admin(server.database_url, master_key),
            files,
            found,
            (wechat, paypay, alipay, receiver),
            servers,
            pem,
        )
        # The files as they are while the gateway runs (the write-ahead log is still there)...
        found.running_copies = {p.name: p.read_bytes() for p in found.database_files if p.exists()}
    finally:
        server.stop()
        for fake in servers:
            fake.stop()
    # ...and as they are after it stopped.
    yield found


def _work(
    base_url: str,
    database_url: str,
    admin: Admin,
    files: Path,
    day: Day,
    fakes: tuple[WeChatPayFake, PayPayFake, AlipayPlusFake, Receiver],
    servers: list[FakeServer],
    pem: str,
) -> None:
    wechat, paypay, alipay, receiver = fakes
    secrets = day.secrets
    os_value = admin("admin", "integration", "create", "--name", "POS")["os"]
    shop = admin("admin", "merchant", "create", "--name", "Shop A")["merchantId"]
    other = admin("admin", "merchant", "create", "--name", "Shop B")["merchantId"]
    terminals = {}
    for name, merchant in (("A", shop), ("B", other)):
        passcode = _passcode()
        made = admin(
            "admin", "terminal", "create", "--merchant", str(merchant), "--passcode", passcode
        )
        terminals[name] = Terminal(made["mid"], made["password"], passcode, merchant, os_value)
        secrets[f"terminal {name} password"] = made["password"]
        day.passcodes.add(passcode)
    (files / "wechat.key").write_text(wechat.key)
    (files / "paypay.secret").write_text(paypay.api_secret)
    (files / "alipay.pem").write_text(pem)
    (files / "alipay-public.pem").write_text(public_pem(alipay.alipay_key))
    accounts = {
        "21": [
            "--provider", "wechatpay", "--api-key", APP_ID, "--api-secret-file",
            str(files / "wechat.key"), "--provider-merchant-id", MCH_ID, "--base-url",
            servers[0].base_url,
        ],
        "01": [
            "--provider", "paypay", "--api-key", paypay.api_key, "--api-secret-file",
            str(files / "paypay.secret"), "--provider-merchant-id", paypay.merchant_id,
            "--base-url", servers[1].base_url,
        ],
        "20": [
            "--provider", "alipayplus", "--api-key", alipay.client_id, "--api-secret-file",
            str(files / "alipay.pem"), "--provider-public-key-file",
            str(files / "alipay-public.pem"), "--provider-merchant-id", "M0001", "--base-url",
            servers[2].base_url,
        ],
    }  # fmt: skip
    for service, options in accounts.items():
        view = admin(
            "admin", "provider", "set", "--merchant", str(shop), "--service", service, *options
        )
        assert view["hasSecret"] is True
    hook = admin(
        "admin",
        "webhook",
        "set",
        "--merchant",
        str(shop),
        "--url",
        f"{servers[3].base_url}/kessai-events",
    )
    secrets["webhook secret"] = hook["secret"]
    console_password = _password() + "-console"
    admin(
        "admin", "user", "create", "--merchant", str(shop), "--email", "owner@shop-a.example",
        "--role", "owner", "--password", console_password,
    )  # fmt: skip
    secrets["console password"] = console_password

    with httpx.Client(base_url=base_url, timeout=60) as http:
        till = Pos(http, terminals["A"], key="AA:BB:CC:00:11:22")
        mistyped = _password()
        secrets["a mistyped LOGIN password"] = mistyped
        assert till.login(password=mistyped).status_code == 401
        secrets["session token 1"] = till.login_ok()

        # Customer codes through the providers (the last two digits pick the fake's outcome).
        wechat_code = "13" + _digits(14) + "01"
        alipay_code = "28" + _digits(14) + "01"
        secrets["WeChat Pay customer code"] = wechat_code
        secrets["Alipay+ customer code"] = alipay_code
        by_wechat = till.pay(wechat_code, 3000)
        by_alipay = till.pay(alipay_code, 2000)
        assert (by_wechat["status"], by_alipay["status"]) == ("COMPLETED", "COMPLETED")
        wrong = "".join(str((int(c) + 1) % 10) for c in terminals["A"].pass_code)
        assert till.refund(by_wechat["transId"], passCode=wrong, amount=100).status_code == 403
        assert till.refund(by_wechat["transId"], amount=1000, refundKey="R1").status_code == 200
        assert till.refund(by_alipay["transId"]).status_code == 200

        # PayPay: a QR code, paid, settled by PayPay's notification.
        shown = till.qr("Q" + random_secrets.token_hex(8), 1500, "01")
        assert shown.status_code == 200, shown.text
        qr_id = shown.json()["transId"]
        paypay.customer_pays(qr_id)
        note = http.post(
            "/notifications/paypay",
            content=paypay.webhook(qr_id),
            headers={"content-type": "application/json"},
        )
        assert note.status_code == 200, note.text
        assert till.paycheck(qr_id).json()["status"] == "COMPLETED"
        headers, body = alipay.notification(by_alipay["transId"], "/notifications/alipayplus")
        told = http.post("/notifications/alipayplus", content=body, headers=headers)
        assert told.status_code < 500, told.text

        # The marker: a value the day stores and logs on purpose, to prove the scan sees both.
        day.marker = "MARK" + random_secrets.token_hex(8).upper()
        assert till.voucher(by_wechat["transId"], day.marker).status_code == 200

        assert till.logout().status_code == 200
        secrets["session token 2"] = till.login_ok()

        # Shop B on the sandbox wallets, every kind of outcome.
        register = Pos(http, terminals["B"])
        secrets["session token 3"] = register.login_ok()
        for n, (service, outcome) in enumerate(
            [
                ("01", "success"),
                ("21", "password"),
                ("20", "declined"),
                ("22", "timeout-success"),
                ("05", "success"),
                ("03", "error"),
            ]
        ):
            code = sandbox_code(http, service, outcome)
            secrets[f"sandbox customer code {n}"] = code
            payment = register.pay(code, 500 + n)
            if outcome == "password":
                approved = http.post(f"/sandbox/charges/{payment['transId']}/approve")
                assert approved.status_code == 200, approved.text
            if outcome in ("success", "password"):
                register.wait_final(payment["transId"])
                assert register.refund(payment["transId"], amount=100).status_code == 200

    # The console: a wrong login, the right one, a voucher edit, a refused forged form, logout.
    with httpx.Client(base_url=base_url, timeout=60) as browser:
        wrong_console = _password()
        secrets["a mistyped console password"] = wrong_console
        assert console_login(browser, "owner@shop-a.example", wrong_console).status_code == 401
        assert console_login(browser, "owner@shop-a.example", console_password).status_code == 303
        secrets["console session"] = browser.cookies["kessai_session"]
        page = browser.get(f"/console/payments/{by_alipay['transId']}")
        assert page.status_code == 200
        csrf = page.text.split('name="_csrf" value="', 1)[1].split('"', 1)[0]
        edited = browser.post(
            f"/console/payments/{by_alipay['transId']}/voucher",
            data={"_csrf": csrf, "voucher_no": "SLIP-7"},
        )
        assert edited.status_code == 303
        forged = browser.post(f"/console/payments/{day.marker}/voucher", data={"voucher_no": "X"})
        assert forged.status_code == 403  # and logged, with its path: the marker
        assert browser.post("/console/logout", data={"_csrf": csrf}).status_code == 303

    # Webhooks delivered, signed with the secret the operator was shown once.
    _wait(lambda: len(receiver.deliveries) >= 4, "webhook deliveries")
    with receiver.lock:
        headers, body = receiver.deliveries[0]
    verify(secrets["webhook secret"], headers["kessai-signature"], body)
    day.logs[:] = sorted(Path(database_url.removeprefix("sqlite:///")).parent.glob("*.log"))


# --- the scanner proves itself --------------------------------------------------------------------


def test_the_scanner_finds_a_secret_in_every_form_it_claims() -> None:
    secret = "Sk" + random_secrets.token_urlsafe(30)
    noise = random_secrets.token_bytes(4096)
    forms = forms_of(secret)
    assert set(forms) >= {"as is", "utf-16", "hex", "base64", "base64url"}
    for form, needles in forms.items():
        for needle in needles:
            planted = noise[:1000] + needle + noise[1000:]
            assert any(f.form == form for f in scan(planted, "blob", {"s": secret})), form
    # Base64 of a longer text that contains the secret, at every alignment.
    for prefix in range(6):
        text = b"x" * prefix + secret.encode() + b"tail"
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            assert scan(noise + encode(text) + noise, "blob", {"s": secret}), (prefix, encode)
    assert scan(noise, "blob", {"s": secret}) == []
    # A passCode is found next to its name, not as any four digits.
    assert scan(b'{"passCode": "4821"}', "blob", {}, ["4821"])
    assert scan(b"pass_code=4821&x", "blob", {}, ["4821"])
    assert scan(b"PASSCODE 4821", "blob", {}, ["4821"])
    assert not scan(b"amount 4821 yen, passcode_hash $argon2id$...", "blob", {}, ["4821"])
    assert not scan(b'"passCode": "48215"', "blob", {}, ["4821"])


def test_the_marker_written_on_purpose_is_found_in_the_database_and_the_log(day: Day) -> None:
    marker = {"marker": day.marker}
    in_database = scan_files(day.database_files, marker) + [
        finding
        for name, data in day.running_copies.items()
        for finding in scan(data, f"{name} (running)", marker)
    ]
    assert in_database, "the scan does not see what the database holds"
    assert scan_files(day.logs, marker), "the scan does not see what the log holds"


# --- the day left no secret behind ----------------------------------------------------------------


def _report(findings: list[Finding]) -> str:
    return "secrets found in clear:\n" + "\n".join(f"  {f}" for f in findings)


def test_the_day_used_every_kind_of_secret(day: Day) -> None:
    kinds = (
        "password",
        "session token",
        "console session",
        "customer code",
        "API key",
        "API secret",
        "private key",
        "webhook secret",
        "master key",
    )
    for kind in kinds:
        assert any(kind in name for name in day.secrets), kind
    assert len(day.passcodes) == 2
    assert all(len(value) >= 12 for value in day.secrets.values())


def test_no_secret_in_the_database_files(day: Day) -> None:
    findings = scan_files(day.database_files, day.secrets, day.passcodes)
    for name, data in day.running_copies.items():
        findings += scan(data, f"{name} (while running)", day.secrets, day.passcodes)
    assert day.running_copies, "the database files were not read"
    assert not findings, _report(findings)


def test_no_secret_in_the_log(day: Day) -> None:
    text = b"".join(path.read_bytes() for path in day.logs)
    # The log really was written at DEBUG, by the gateway's own loggers as well as the libraries.
    assert b"DEBUG" in text, "the server did not log at DEBUG: the scan would prove little"
    assert b"kessai" in text
    findings = scan_files(day.logs, day.secrets, day.passcodes)
    assert not findings, _report(findings)
