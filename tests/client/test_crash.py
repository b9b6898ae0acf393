"""The register killed with SIGKILL at the worst instants; `kessai-pos recover` finds the truth.

Crash points come from the SDK's testing hook (KESSAI_POS_CRASH_AT, which makes the process
SIGKILL itself) or from outside: a proxy holds the gateway's answer and the test kills the
register while it waits for it. Afterwards the journal must agree with the gateway, and the
wallets' own ledger (`kessai sandbox ledger`) must show exactly one charge, or none.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from kessai.client import Journal
from kessai.client.config import write_config_file

from .conftest import KESSAI_POS, SHARED_KEY, Credentials, Gateway, clean_env
from .proxy import Proxy

pytestmark = pytest.mark.e2e


class Register:
    """`kessai-pos` as a separate process, with its own config file and journal."""

    def __init__(self, tmp_path: Path, gateway: Gateway, creds: Credentials, url: str) -> None:
        self.journal_path = tmp_path / "journal.db"
        self.config_path = tmp_path / "terminal.toml"
        write_config_file(
            self.config_path,
            {
                "url": url,
                "mid": creds.mid,
                "password": creds.password,
                "os": creds.os,
                "key": SHARED_KEY,
                "pass_code": creds.pass_code,
                "journal": str(self.journal_path),
                "poll": {"first_delay_s": 0.1, "interval_s": 0.2, "timeout_s": 20.0},
                "retry": {"base_delay_s": 0.05, "max_delay_s": 0.2},
            },
        )
        self.env = clean_env(
            KESSAI_TERMINAL_CONFIG=str(self.config_path),
            PYTHONUNBUFFERED="1",
            XDG_CONFIG_HOME=str(tmp_path / "xdg-config"),
            XDG_STATE_HOME=str(tmp_path / "xdg-state"),
        )

    def run(self, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if crash_at is not None:
            env["KESSAI_POS_CRASH_AT"] = crash_at
        return subprocess.run(
            [KESSAI_POS, *args], capture_output=True, text=True, env=env, timeout=60, check=False
        )

    def json(self, *args: str) -> tuple[int, Any]:
        done = self.run(*args, "--json")
        return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [KESSAI_POS, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def entries(self) -> list[Any]:
        with Journal(self.journal_path) as journal:
            return journal.entries()

    def refunds(self) -> list[Any]:
        with Journal(self.journal_path) as journal:
            return journal.refunds()


def killed(done: subprocess.CompletedProcess[str]) -> bool:
    return done.returncode == -signal.SIGKILL


def test_killed_after_the_intent_before_sending(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    register = Register(tmp_path, gateway, shared, gateway.url)
    code = gateway.code("success")
    crashed = register.run("pay", "4201", "--code", code, crash_at="after_intent")
    assert killed(crashed), crashed.stderr
    [entry] = register.entries()
    assert (entry.status, entry.attempts, entry.trans_id) == ("INTENT", 0, None)

    status, report = register.json("recover")
    assert status == 0
    [item] = report["payments"]
    assert (item["transKey"], item["before"], item["after"]) == (
        entry.trans_key,
        "INTENT",
        "NOT_SENT",
    )
    assert "not" in item["note"]
    # The customer's one-time code never reached the wallet: it still pays, once.
    status, paid = register.json("pay", "4202", "--code", code)
    assert (status, paid["status"]) == (0, "COMPLETED")
    books = gateway.ledger()
    assert [row for row in books if row["amount"] == 4201] == []
    assert [(r["ref"], r["status"]) for r in books if r["amount"] == 4202] == [
        (paid["transId"], "SUCCEEDED")
    ]


def test_killed_after_the_gateway_charged_before_the_answer_is_journaled(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    register = Register(tmp_path, gateway, shared, gateway.url)
    crashed = register.run("pay", "4203", "--code", gateway.code("success"), crash_at="after_send")
    assert killed(crashed), crashed.stderr
    [entry] = register.entries()
    assert (entry.status, entry.attempts, entry.trans_id) == ("SENT", 1, None)

    recovered = register.run("recover")
    assert recovered.returncode == 0 and "COMPLETED" in recovered.stdout, recovered.stdout
    status, payment = register.json("status", entry.trans_key)
    assert (status, payment["status"]) == (0, "COMPLETED")
    [entry] = register.entries()
    assert (entry.status, entry.trans_id) == ("COMPLETED", payment["transId"])
    charges = [row for row in gateway.ledger() if row["amount"] == 4203]
    assert [(r["ref"], r["status"]) for r in charges] == [(payment["transId"], "SUCCEEDED")]


def test_killed_from_outside_while_the_charged_answer_is_held(
    gateway: Gateway, shared: Credentials, proxy: Proxy, tmp_path: Path
) -> None:
    register = Register(tmp_path, gateway, shared, proxy.url)
    proxy.add("POST", "/v1/payments", "hold")
    process = register.start("pay", "4204", "--code", gateway.code("timeout-success"), "--json")
    try:
        assert proxy.answered.wait(30), "the gateway never answered the held request"
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=10)
        proxy.release.set()
    assert process.returncode == -signal.SIGKILL
    [entry] = register.entries()
    assert entry.status == "SENT"

    time.sleep(1.1)  # the wallet's "timeout" answer surfaces after 1 s
    status, report = register.json("recover", "--wait", "5")
    [item] = report["payments"]
    assert (status, item["before"], item["after"]) == (0, "SENT", "COMPLETED"), report
    charges = [row for row in gateway.ledger() if row["amount"] == 4204]
    assert [(r["ref"], r["status"]) for r in charges] == [(item["transId"], "SUCCEEDED")]


def _read_until(process: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    """Standard error as it comes, until ``needle`` shows (read raw: no buffer hides a line)."""
    assert process.stderr is not None
    descriptor = process.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout_s
    while needle.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([descriptor], [], [], 0.1)
        if ready:
            chunk = os.read(descriptor, 4096)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def test_killed_while_waiting_for_the_customers_password(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    register = Register(tmp_path, gateway, shared, gateway.url)
    process = register.start("pay", "4205", "--code", gateway.code("password", "21"))
    try:
        shown = _read_until(process, "password", 30)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)
    # The register said that it waits, and why.
    assert "waiting: Waiting for the customer to confirm the payment" in shown, shown
    assert "WeChat" in shown or "password" in shown
    [entry] = register.entries()
    assert (entry.status, entry.pending_reason) == ("PENDING", "WAITING_FOR_CUSTOMER")
    assert entry.trans_id is not None

    gateway.settle(entry.trans_id, True)  # the customer confirms after the register died
    status, report = register.json("recover")
    assert status == 0 and report["payments"][0]["after"] == "COMPLETED"
    gateway.expect(entry.trans_id, "SUCCEEDED")
    gateway.expect_charges(4205, ("SUCCEEDED", 0))


def test_refund_killed_before_and_after_sending(
    gateway: Gateway, shared: Credentials, tmp_path: Path
) -> None:
    register = Register(tmp_path, gateway, shared, gateway.url)
    status, paid = register.json("pay", "4206", "--code", gateway.code("success"))
    assert status == 0
    trans_id = paid["transId"]

    crashed = register.run("refund", trans_id, "--amount", "1000", crash_at="after_intent")
    assert killed(crashed), crashed.stderr
    status, report = register.json("recover")
    assert (status, report["refunds"][0]["after"]) == (0, "NOT_SENT")

    crashed = register.run("refund", trans_id, "--amount", "1000", crash_at="after_send")
    assert killed(crashed), crashed.stderr
    sent = [r for r in register.refunds() if r.status == "SENT"]
    assert len(sent) == 1
    status, report = register.json("recover")
    assert status == 0
    assert [(r["refundKey"], r["after"]) for r in report["refunds"]] == [
        (sent[0].refund_key, "SUCCEEDED")
    ]
    status, payment = register.json("status", trans_id)
    assert (status, payment["refundedAmount"]) == (0, 1000)
    gateway.expect(trans_id, "SUCCEEDED", 1000)
