"""Every `kessai-pos` command, in process (Typer's runner) against the real gateway."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kessai.client import Journal
from kessai.client.config import read_config_file, write_config_file
from kessai.pos.cli import EXIT_DECLINED, EXIT_ERROR, EXIT_OK, EXIT_PENDING, app

from .conftest import SHARED_KEY, Credentials, Gateway
from .proxy import Proxy

pytestmark = pytest.mark.e2e


class Pos:
    """The register's commands with one config file and journal."""

    def __init__(
        self, tmp_path: Path, gateway: Gateway, creds: Credentials, **changes: Any
    ) -> None:
        self.runner = CliRunner()
        self.journal_path = tmp_path / "journal.db"
        self.config_path = tmp_path / "terminal.toml"
        settings: dict[str, Any] = {
            "url": gateway.url,
            "mid": creds.mid,
            "password": creds.password,
            "os": creds.os,
            "key": SHARED_KEY,
            "pass_code": creds.pass_code,
            "journal": str(self.journal_path),
            "poll": {"first_delay_s": 0.1, "interval_s": 0.2, "timeout_s": 15.0},
            "retry": {"base_delay_s": 0.05, "max_delay_s": 0.2},
        }
        settings.update(changes)
        write_config_file(self.config_path, {k: v for k, v in settings.items() if v is not None})
        self.env = {
            "KESSAI_TERMINAL_CONFIG": str(self.config_path),
            "KESSAI_TERMINAL_URL": "",
            "KESSAI_TERMINAL_JOURNAL": "",
        }

    def run(self, *args: str, input: str | None = None) -> Any:
        return self.runner.invoke(app, list(args), env=self.env, input=input)

    def json(self, *args: str, input: str | None = None) -> tuple[int, Any]:
        result = self.run(*args, "--json", input=input)
        lines = result.stdout.strip().splitlines()
        assert lines, (result.exit_code, result.output, result.exception)
        return result.exit_code, json.loads(lines[-1])

    def journal(self) -> Journal:
        return Journal(self.journal_path)


@pytest.fixture
def pos(tmp_path: Path, gateway: Gateway, shared: Credentials) -> Pos:
    return Pos(tmp_path, gateway, shared)


def test_configure_writes_an_owner_only_file(
    tmp_path: Path, gateway: Gateway, shared: Credentials
) -> None:
    runner = CliRunner()
    path = tmp_path / "conf" / "terminal.toml"
    env = {"KESSAI_TERMINAL_CONFIG": str(path)}
    # What is not given is asked for; the password is typed hidden.
    answers = f"{gateway.url}\n{shared.mid}\n{shared.password}\n{shared.os}\n"
    result = runner.invoke(
        app,
        ["configure", "--key", "AA:BB:CC:DD:EE:FF", "--journal", str(tmp_path / "j.db"), "--json"],
        env=env,
        input=answers,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["mid"] == shared.mid and summary["passCodeConfigured"] is False
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    saved = read_config_file(path)
    assert saved["password"] == shared.password and saved["key"] == "AA:BB:CC:DD:EE:FF"
    # Running it again changes only what is given.
    again = runner.invoke(app, ["configure", "--passcode", shared.pass_code], env=env)
    assert again.exit_code == 0, again.output
    assert read_config_file(path)["pass_code"] == shared.pass_code
    assert read_config_file(path)["mid"] == shared.mid
    bad = runner.invoke(app, ["configure", "--mid", "12345", "--json"], env=env)
    assert bad.exit_code == EXIT_ERROR and "mid must be 16 digits" in bad.stdout


def test_login_logout(pos: Pos, shared: Credentials) -> None:
    status, data = pos.json("login")
    assert status == EXIT_OK and data["mid"] == shared.mid and data["key"] == SHARED_KEY
    status, data = pos.json("logout")
    assert (status, data) == (EXIT_OK, {"loggedOut": True})
    human = pos.run("login")
    assert human.exit_code == 0 and "Logged in" in human.stdout


def test_pay_with_the_code_as_an_option_and_from_the_scanner(pos: Pos, gateway: Gateway) -> None:
    status, paid = pos.json("pay", "1200", "--code", gateway.code("success"))
    assert (status, paid["status"], paid["amount"]) == (EXIT_OK, "COMPLETED", 1200)
    # A USB scanner types the code and Enter on standard input.
    scanned = pos.run("pay", "800", input=gateway.code("success") + "\n")
    assert scanned.exit_code == EXIT_OK, scanned.output
    assert "PAID" in scanned.stdout and "¥800" in scanned.stdout
    empty = pos.run("pay", "800", input="")
    assert empty.exit_code == EXIT_ERROR and "NO_CODE" in empty.output
    gateway.expect(paid["transId"], "SUCCEEDED")


@pytest.mark.parametrize(
    ("outcome", "exit_code", "status"),
    [
        ("declined", EXIT_DECLINED, "FAILED"),
        ("error", EXIT_DECLINED, "FAILED"),
        ("timeout-success", EXIT_OK, "COMPLETED"),
        ("timeout-failure", EXIT_DECLINED, "FAILED"),
    ],
)
def test_pay_exit_codes(
    pos: Pos, gateway: Gateway, outcome: str, exit_code: int, status: str
) -> None:
    code, payment = pos.json("pay", "500", "--code", gateway.code(outcome))
    assert (code, payment["status"]) == (exit_code, status)


def test_pay_waits_and_says_why_while_the_customer_types_the_password(
    pos: Pos, gateway: Gateway
) -> None:
    status, waiting = pos.json("pay", "650", "--code", gateway.code("password"), "--no-wait")
    assert (status, waiting["pendingReason"]) == (EXIT_PENDING, "WAITING_FOR_CUSTOMER")
    assert pos.json("status", waiting["transId"])[0] == EXIT_PENDING
    # The customer declines in the app while the register waits.
    customer = threading.Thread(target=_decline_when_journaled, args=(pos, gateway, 651))
    customer.start()
    shown = pos.run("pay", "651", "--code", gateway.code("password"))
    customer.join()
    assert (
        "waiting: Waiting for the customer to confirm the payment in the PayPay app (password)"
        in shown.output
    )
    assert shown.exit_code == EXIT_DECLINED and "CUSTOMER_DECLINED" in shown.stdout


def _decline_when_journaled(pos: Pos, gateway: Gateway, amount: int) -> None:
    """The customer declines in the app, once the register has the payment's transId."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with pos.journal() as journal:
            found = [e for e in journal.entries() if e.amount == amount and e.trans_id]
        if found:
            gateway.settle(found[0].trans_id or "", False)
            return
        time.sleep(0.1)


def _customer_scans(pos: Pos, gateway: Gateway, decision: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with pos.journal() as journal:
                found = [e for e in journal.entries() if e.qr_data]
        except Exception:  # the register may be writing its journal right now: look again
            found = []
        if found and found[0].qr_data:
            gateway.customer_decides(found[0].qr_data, decision)
            return
        time.sleep(0.1)


def test_qr_draws_the_code_and_waits_until_paid(pos: Pos, gateway: Gateway) -> None:
    customer = threading.Thread(target=_customer_scans, args=(pos, gateway, "approve"))
    customer.start()
    result = pos.run("qr", "1800", "--service", "01", "--json")
    customer.join()
    assert result.exit_code == EXIT_OK, result.output
    first, last = (json.loads(line) for line in result.stdout.strip().splitlines())
    assert first["status"] == "PENDING" and first["qrData"].startswith(gateway.url)
    assert last["status"] == "COMPLETED" and last["transId"] == first["transId"]
    assert "waiting: Waiting for the customer to scan the code" in result.output
    gateway.expect(last["transId"], "SUCCEEDED")


def test_qr_expires(pos: Pos) -> None:
    result = pos.run("qr", "300", "--service", "01", "--ttl", "2")
    assert result.exit_code == EXIT_DECLINED, result.output
    assert "█" in result.stdout  # the QR code, drawn in the terminal
    assert "EXPIRED" in result.stdout and "QR_EXPIRED" in result.stdout
    shown = pos.run("qr", "300", "--service", "01", "--no-wait")
    assert shown.exit_code == EXIT_PENDING and "sandbox/pay/" in shown.stdout


def test_refund_asks_for_the_passcode_when_not_configured(
    tmp_path: Path, gateway: Gateway, shared: Credentials
) -> None:
    pos = Pos(tmp_path, gateway, shared, pass_code=None)
    status, paid = pos.json("pay", "1000", "--code", gateway.code("success"))
    assert status == EXIT_OK
    status, partly = pos.json(
        "refund", paid["transId"], "--amount", "250", input=shared.pass_code + "\n"
    )
    assert (status, partly["status"], partly["refundedAmount"]) == (
        EXIT_OK,
        "PARTIALLY_REFUNDED",
        250,
    )
    wrong = "0000" if shared.pass_code != "0000" else "1111"
    refused = pos.run("refund", paid["transId"], "--passcode", wrong)
    assert refused.exit_code == EXIT_ERROR and "WRONG_PASSCODE" in refused.output
    rest = pos.run("refund", paid["transId"], "--passcode", shared.pass_code)
    assert rest.exit_code == EXIT_OK and "REFUNDED" in rest.stdout
    gateway.expect(paid["transId"], "SUCCEEDED", 1000)


def test_status_voucher_identify(pos: Pos, gateway: Gateway) -> None:
    status, paid = pos.json("pay", "777", "--code", gateway.code("success"))
    assert status == EXIT_OK
    assert pos.json("status", paid["transKey"])[1]["transId"] == paid["transId"]
    assert pos.json("status", paid["transId"])[1]["transKey"] == paid["transKey"]
    status, declined = pos.json("pay", "777", "--code", gateway.code("declined"))
    assert pos.json("status", declined["transId"])[0] == EXIT_DECLINED
    status, with_voucher = pos.json("voucher", paid["transId"], "SLIP-77")
    assert (status, with_voucher["voucherNo"]) == (EXIT_OK, "SLIP-77")
    missing = pos.json("status", "NOSUCHKEY")
    assert missing[0] == EXIT_ERROR and missing[1]["error"]["code"] == "PAYMENT_NOT_FOUND"
    status, found = pos.json("identify", gateway.code("success", "02"))
    assert (status, found["serviceId"]) == (EXIT_OK, "02")
    human = pos.run("identify", gateway.code("success", "03"))
    assert human.exit_code == EXIT_OK and "au PAY" in human.stdout
    barcode = pos.run("identify", "4901234567894")
    assert barcode.exit_code == EXIT_ERROR and "NOT_A_PAYMENT_CODE" in barcode.output


def test_journal_lists_and_filters(pos: Pos, gateway: Gateway) -> None:
    assert "no matching entries" in pos.run("journal").stdout
    pos.json("pay", "901", "--code", gateway.code("success"))
    pos.json("pay", "902", "--code", gateway.code("declined"))
    pos.json("qr", "903", "--service", "01", "--no-wait")
    status, everything = pos.json("journal")
    assert status == EXIT_OK
    assert [e["amount"] for e in everything["payments"]] == [903, 902, 901]  # newest first
    assert [e["amount"] for e in pos.json("journal", "--status", "completed")[1]["payments"]] == [
        901
    ]
    assert [e["amount"] for e in pos.json("journal", "--unresolved")[1]["payments"]] == [903]
    assert [e["amount"] for e in pos.json("journal", "--kind", "qr")[1]["payments"]] == [903]
    assert len(pos.json("journal", "--since", "1h", "--limit", "2")[1]["payments"]) == 2
    assert pos.json("journal", "--since", "2999-01-01")[1]["payments"] == []
    table = pos.run("journal")
    assert table.exit_code == 0 and "FAILED" in table.stdout and "¥901" in table.stdout
    assert pos.run("journal", "--kind", "cash").exit_code == 2


def test_recover_reports_and_exit_codes(pos: Pos, gateway: Gateway) -> None:
    status, report = pos.json("recover")
    assert (status, report["unresolved"]) == (EXIT_OK, 0)
    status, waiting = pos.json("pay", "990", "--code", gateway.code("password"), "--no-wait")
    assert status == EXIT_PENDING
    status, report = pos.json("recover")
    assert (status, report["unresolved"]) == (EXIT_PENDING, 1)
    gateway.settle(waiting["transId"], False)
    result = pos.run("recover")
    assert result.exit_code == EXIT_OK and "resolved" in result.stdout and "FAILED" in result.stdout


def test_a_lost_answer_is_unknown_never_declined(
    tmp_path: Path, gateway: Gateway, shared: Credentials, proxy: Proxy
) -> None:
    pos = Pos(tmp_path, gateway, shared, url=proxy.url)
    proxy.add("POST", "/v1/payments", "cut_after", times=10)
    result = pos.run("pay", "3301", "--code", gateway.code("success"))
    assert result.exit_code == EXIT_PENDING
    assert "UNKNOWN" in result.output and "DECLINED" not in result.output
    assert "kessai-pos recover" in result.output
    status, report = pos.json("recover")  # the proxy lets the STATUS through
    assert (status, report["payments"][0]["after"]) == (EXIT_OK, "COMPLETED")
    gateway.expect_charges(3301, ("SUCCEEDED", 0))


def test_missing_settings_are_an_error(tmp_path: Path) -> None:
    runner = CliRunner()
    env: dict[str, str | None] = {
        "KESSAI_TERMINAL_CONFIG": None,
        "XDG_CONFIG_HOME": str(tmp_path),  # no terminal.toml there
        "KESSAI_TERMINAL_URL": None,
        "KESSAI_TERMINAL_MID": None,
    }
    result = runner.invoke(app, ["status", "ABC", "--json"], env=env)
    assert result.exit_code == EXIT_ERROR
    assert "missing settings" in json.loads(result.stdout)["error"]["message"]
    named = runner.invoke(app, ["--config", str(tmp_path / "none.toml"), "login"], env=env)
    assert named.exit_code == EXIT_ERROR and "no config file" in named.output


def test_a_payment_whose_wait_fails_is_unknown_with_its_keys(
    tmp_path: Path, gateway: Gateway, shared: Credentials, proxy: Proxy
) -> None:
    poll = {"first_delay_s": 0.1, "interval_s": 0.2, "timeout_s": 1.5}
    pos = Pos(tmp_path, gateway, shared, url=proxy.url, poll=poll)
    proxy.add("GET", "/v1/payments/", "cut_before", times=1000)  # every PAYCHECK is lost
    status, waiting = pos.json("pay", "3303", "--code", gateway.code("password"))
    assert status == EXIT_PENDING
    assert waiting["status"] == "PENDING" and waiting["transId"] and waiting["transKey"]
    assert waiting["waitError"]["code"] == "NetworkError"
    shown = pos.run("pay", "3304", "--code", gateway.code("password"))
    assert shown.exit_code == EXIT_PENDING
    assert "UNKNOWN" in shown.output and "DECLINED" not in shown.output
    [entry] = [e for e in pos.journal().entries() if e.amount == 3304]
    assert f"transId {entry.trans_id}" in shown.stdout and entry.trans_key in shown.stdout
    assert f"kessai-pos status {entry.trans_id}" in shown.output
    gateway.settle(waiting["transId"], False)
    gateway.settle(entry.trans_id or "", False)


def test_a_refund_run_again_after_an_unknown_outcome_refunds_once(
    tmp_path: Path, gateway: Gateway, shared: Credentials, proxy: Proxy
) -> None:
    pos = Pos(tmp_path, gateway, shared, url=proxy.url)
    status, paid = pos.json("pay", "3305", "--code", gateway.code("success"))
    assert status == EXIT_OK
    trans_id = paid["transId"]
    proxy.add("POST", f"/v1/payments/{trans_id}/refunds", "cut_after", times=4)  # every answer
    status, lost = pos.json("refund", trans_id, "--amount", "1000")
    key = lost["error"]["refundKey"]
    assert status == EXIT_PENDING and key
    assert lost["error"]["retryable"] and lost["error"]["retryWith"] == ["--refund-key", key]
    # The cashier runs the same command again: the first refund went through; no second one.
    status, again = pos.json("refund", trans_id, "--amount", "1000")
    assert status == EXIT_OK, again
    assert (again["refundKey"], again["refundedAmount"]) == (key, 1000)
    assert [r["after"] for r in again["recovered"]["refunds"]] == ["SUCCEEDED"]
    # Retrying with the key is the same refund too.
    status, same = pos.json("refund", trans_id, "--amount", "1000", "--refund-key", key)
    assert (status, same["refundedAmount"], len(same["refunds"])) == (EXIT_OK, 1000, 1)
    gateway.expect(trans_id, "SUCCEEDED", 1000)


def test_a_refund_of_another_amount_after_one_went_through_sends_nothing_and_says_so(
    tmp_path: Path, gateway: Gateway, shared: Credentials, proxy: Proxy
) -> None:
    pos = Pos(tmp_path, gateway, shared, url=proxy.url)
    _, paid = pos.json("pay", "3308", "--code", gateway.code("success"))
    trans_id = paid["transId"]
    proxy.add("POST", f"/v1/payments/{trans_id}/refunds", "cut_after", times=4)
    status, _ = pos.json("refund", trans_id, "--amount", "1000")
    assert status == EXIT_PENDING
    # Another amount now: the earlier refund went through, this one is not sent, and the exit
    # status does not claim it was.
    status, other = pos.json("refund", trans_id, "--amount", "500")
    assert status == EXIT_ERROR, other
    assert other["refundSent"] is False and other["refundedAmount"] == 1000
    gateway.expect(trans_id, "SUCCEEDED", 1000)


def test_an_unknown_refund_says_to_retry_with_its_key(
    tmp_path: Path, gateway: Gateway, shared: Credentials, proxy: Proxy
) -> None:
    pos = Pos(tmp_path, gateway, shared, url=proxy.url)
    _, paid = pos.json("pay", "3306", "--code", gateway.code("success"))
    trans_id = paid["transId"]
    proxy.add("POST", f"/v1/payments/{trans_id}/refunds", "cut_after", times=4)
    shown = pos.run("refund", trans_id, "--amount", "500")
    assert shown.exit_code == EXIT_PENDING
    [refund] = pos.journal().refunds(trans_id=trans_id)
    assert f"--refund-key {refund.refund_key}" in shown.output
    assert "pay again" not in shown.output
    gateway.expect(trans_id, "SUCCEEDED", 500)


def test_pay_json_run_again_shows_what_recovery_found(
    tmp_path: Path, gateway: Gateway, shared: Credentials, proxy: Proxy
) -> None:
    pos = Pos(tmp_path, gateway, shared, url=proxy.url)
    code = gateway.code("success")
    proxy.add("POST", "/v1/payments", "cut_after", times=4)
    status, lost = pos.json("pay", "3307", "--code", code)
    key = lost["error"]["transKey"]
    assert status == EXIT_PENDING and lost["error"]["retryWith"] == ["--trans-key", key]
    # Run again with the same code: the first payment was charged, and the output says so.
    status, again = pos.json("pay", "3307", "--code", code)
    [first] = again["recovered"]["payments"]
    assert (first["transKey"], first["after"]) == (key, "COMPLETED")
    assert status == EXIT_DECLINED and again["failureCode"] == "CODE_ALREADY_USED"
    gateway.expect_charges(3307, ("FAILED", 0), ("SUCCEEDED", 0))  # the second try was refused
