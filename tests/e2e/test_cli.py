"""The installed `kessai` command itself: provisioning with `--json`, its errors, and the ledger.

The other tests provision through ``CliBatch`` (the same commands in one interpreter); this one
runs each command as its own `kessai` process, exactly as an operator's script would.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from .support import KESSAI, Cli, Pos, Terminal, base_env, free_port, sandbox_code

pytestmark = pytest.mark.e2e


def test_kessai_admin_provisions_a_terminal_that_works(cli: Cli, http: httpx.Client) -> None:
    merchant, integration = cli.json_many(
        [
            ["admin", "merchant", "create", "--name", "実店舗 CLI"],
            ["admin", "integration", "create", "--name", "CLI POS"],
        ]
    )
    assert merchant["name"] == "実店舗 CLI"
    assert isinstance(merchant["merchantId"], int)
    assert re.fullmatch(r"[0-9]{6}", integration["os"])
    made = cli.json(
        "admin", "terminal", "create", "--merchant", str(merchant["merchantId"]),
        "--passcode", "2468",
    )  # fmt: skip
    assert re.fullmatch(r"[0-9]{16}", made["mid"])
    assert re.fullmatch(r"[A-Za-z0-9]{12}", made["password"])
    assert made["passCode"] == "2468"
    assert made["merchantId"] == merchant["merchantId"]
    terminal = Terminal(
        made["mid"], made["password"], made["passCode"], made["merchantId"], integration["os"]
    )
    pos = Pos(http, terminal, key="CLI-REGISTER-1")
    pos.login_ok()
    paid = pos.pay(sandbox_code(http, "01"), 777)
    refunded = pos.refund(paid["transId"], amount=7)  # with the merchant's own passCode
    assert refunded.status_code == 200, refunded.text
    listed, ledger = cli.json_many(
        [["admin", "terminal", "list", "--merchant", str(merchant["merchantId"])],
         ["sandbox", "ledger"]]
    )  # fmt: skip
    assert [(t["mid"], t["loggedIn"], t["key"]) for t in listed] == [
        (made["mid"], True, "CLI-REGISTER-1")
    ]
    charge = next(row for row in ledger if row["ref"] == paid["transId"])
    assert (charge["amount"], charge["refundedAmount"], charge["status"]) == (777, 7, "SUCCEEDED")


def test_terminal_list_shows_a_login_lock_in_its_text(pos: Pos, cli: Cli) -> None:
    # Without --json the list used to show only a refund lock; a locked LOGIN looked normal.
    def listed() -> str:
        argv = [KESSAI, "admin", "terminal", "list", "--merchant", str(pos.terminal.merchant_id)]
        argv += ["--database", cli.database_url]
        done = subprocess.run(
            argv, env=base_env(), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        (line,) = [line for line in done.stdout.splitlines() if line.startswith(pos.terminal.mid)]
        return line

    assert pos.logout().status_code == 200
    assert "LOCKED" not in listed()
    for _ in range(5):
        assert pos.login(password="WrongPass123").status_code == 401
    assert listed().endswith("logged out  LOGIN LOCKED")
    assert cli.json("admin", "terminal", "unlock", pos.terminal.mid)["unlocked"] is True
    assert "LOCKED" not in listed()


def test_kessai_admin_errors_exit_2_with_a_json_error(cli: Cli) -> None:
    command = [KESSAI, "admin", "terminal", "create", "--merchant", "999999999"]
    command += ["--database", cli.database_url, "--json"]
    done = subprocess.run(
        command, env=base_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "NOT_FOUND"
    assert error["field"] == "merchant"
    assert error["message"]


@pytest.mark.parametrize(
    ("option", "value", "field"),
    [("--status", "DELIVRED", "status"), ("--limit", "0", "limit"), ("--limit", "1001", "limit")],
)
def test_webhook_events_refuses_a_misspelt_status_or_a_limit_out_of_range(
    tmp_path: Path, option: str, value: str, field: str
) -> None:
    # A misspelt status used to answer "no events", as if none had that status, and a limit
    # out of range was quietly moved into it.
    database = f"sqlite:///{tmp_path / 'k.db'}"

    def events(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [KESSAI, "admin", "webhook", "events", *args, "--database", database, "--json"]
        return subprocess.run(
            argv, env=base_env(), capture_output=True, text=True, timeout=60, check=False
        )

    done = events(option, value)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert json.loads(done.stdout)["error"]["field"] == field
    done = events("--status", "dead", "--limit", "1000")
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize(
    ("database", "shown", "reason"),
    [
        ("{tmp}/missing/k.db", "sqlite:///{tmp}/missing/k.db", "No such file or directory"),
        ("mysql://shop/kessai", "mysql://shop/kessai", "unsupported database mysql"),
        # Port 9 (discard) has no PostgreSQL on it; the password must not reach the message.
        (
            "postgresql://kessai:hunter2-secret@127.0.0.1:9/kessai",
            "postgresql://kessai:***@127.0.0.1:9/kessai",
            "Connect call failed",
        ),
    ],
)
def test_a_database_that_cannot_be_opened_is_one_plain_line(
    database: str, shown: str, reason: str, tmp_path: Path
) -> None:
    url = database.format(tmp=tmp_path)
    expected = f"error cannot open the database {shown.format(tmp=tmp_path)}: "
    for command in (["migrate"], ["admin", "merchant", "create", "--name", "Shop", "--json"]):
        argv = [KESSAI, *command, "--database", url]
        done = subprocess.run(
            argv, env=base_env(), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert done.stdout == ""
        assert done.stderr.startswith(expected)
        assert reason in done.stderr
        assert "Traceback" not in done.stderr and "hunter2" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("port", ["0", "65536", "70000", "-5"])
def test_a_port_outside_1_to_65535_is_refused_before_anything_starts(
    tmp_path: Path, command: str, port: str
) -> None:
    # 70000 used to start a server announcing "running on :70000" with one worker, and a
    # traceback (OverflowError) with two; 0 gave each worker a different random port.
    argv = [KESSAI, command, "--port", port, "--database", f"sqlite:///{tmp_path / 'k.db'}"]
    if command == "serve":
        argv += ["--workers", "2"]
    done = subprocess.run(
        argv, env=base_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Invalid value for '--port'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "k.db").exists()  # nothing was created either


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KESSAI_WORKER_BATCH_SIZE", "-5", "must be more than 0, not -5"),
        ("KESSAI_CONSOLE_PAGE_SIZE", "abc", "must be a whole number, not 'abc'"),
        ("KESSAI_CONSOLE_COOKIE_SECURE", "ture", "must be auto, true or false, not 'ture'"),
        (
            "KESSAI_LOG_LEVEL",
            "VERBOSE",
            "must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not 'VERBOSE'",
        ),
    ],
)
def test_a_bad_setting_stops_serve_before_any_worker_starts(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    port = str(free_port())  # never bound: the settings are refused first
    argv = [KESSAI, "serve", "--workers", "2", "--port", port, "--database", str(tmp_path / "k.db")]
    env = base_env() | {variable: value}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr == f"error {variable} {message}\n"


def test_a_bad_setting_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    argv = [KESSAI, "worker", "--database", str(tmp_path / "k.db")]
    env = base_env() | {"KESSAI_WORKER_BATCH_SIZE": "abc"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr == "error KESSAI_WORKER_BATCH_SIZE must be a whole number, not 'abc'\n"


def test_what_people_typed_is_printed_as_written_not_as_markup(tmp_path: Path) -> None:
    # A name or a path with brackets or colons used to be read as rich markup: "[Shibuya]" was
    # dropped from the answer, and "[/x]" ended the command with a traceback after the merchant
    # had been created.
    database = str(tmp_path / "k.db")
    name = "Café [Shibuya] [/x] :smile:"

    def kessai(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [KESSAI, *args, "--database", database]
        return subprocess.run(
            argv, env=base_env(), capture_output=True, text=True, timeout=60, check=False
        )

    made = kessai("admin", "merchant", "create", "--name", name)
    assert made.returncode == 0, (made.stdout, made.stderr)
    assert re.fullmatch(rf"merchant [0-9]+: {re.escape(name)}\n", made.stdout)
    merchant = made.stdout.split(":")[0].removeprefix("merchant ")
    missing = tmp_path / "[/x] a folder that is not there, with a long name" / "secret.txt"
    refused = kessai(
        "admin", "provider", "set", "--merchant", merchant, "--service", "01",
        "--provider", "paypay", "--api-secret-file", str(missing),
    )  # fmt: skip
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    # One line, however long, naming the path as given.
    assert (
        refused.stderr == f"error INVALID_FIELD: cannot read {missing}: No such file or directory\n"
    )
