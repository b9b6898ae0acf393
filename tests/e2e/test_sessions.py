"""Sessions: one device per mid, administrators ending and disabling, the LOGIN lockout, and the
idle timeout (on a second server whose sessions end after 2 idle seconds)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from .support import (
    IDLE_TIMEOUT_SECONDS,
    Cli,
    KessaiServer,
    Pos,
    Provisioner,
    Terminal,
    assert_error,
    new_key,
    sandbox_code,
)

pytestmark = pytest.mark.e2e

GHOST_TRANS_ID = "1000000000"


def _alive(pos: Pos, token: str) -> bool:
    """Whether ``token`` still opens the API (a lookup of an unknown payment answers 404)."""
    response = pos.paycheck(GHOST_TRANS_ID, token=token)
    if response.status_code == 404:
        return True
    assert_error(response, 401, "SESSION_INVALID")
    return False


def test_one_device_per_mid(http: httpx.Client, terminal: Terminal) -> None:
    device_a = Pos(http, terminal, key="AA:BB:CC:DD:EE:01")
    device_b = Pos(http, terminal, key="AA-BB-CC-DD-EE-02")
    first = device_a.login_ok()
    assert _alive(device_a, first)
    assert_error(device_b.login(), 409, "TERMINAL_IN_USE", "key")
    assert device_b.token is None
    assert _alive(device_a, first), "a refused LOGIN must not end the live session"
    # The same device logs in again: a new token, and the old one stops working.
    second = device_a.login_ok()
    assert second != first
    assert _alive(device_a, second)
    assert not _alive(device_a, first)
    assert_error(device_b.login(), 409, "TERMINAL_IN_USE")
    # After LOGOUT the mid is free for another device.
    assert device_a.logout(second).status_code == 200
    assert not _alive(device_a, second)
    third = device_b.login_ok()
    assert _alive(device_b, third)
    assert_error(device_a.login(), 409, "TERMINAL_IN_USE")


def test_an_administrator_ends_a_session(http: httpx.Client, terminal: Terminal, cli: Cli) -> None:
    lost_device = Pos(http, terminal)
    token = lost_device.login_ok()
    ended = cli.json("admin", "terminal", "logout", terminal.mid)
    assert ended == {"mid": terminal.mid, "sessionEnded": True}
    assert not _alive(lost_device, token)
    replacement = Pos(http, terminal)
    assert _alive(replacement, replacement.login_ok())


def test_a_disabled_terminal_cannot_work(pos: Pos, cli: Cli) -> None:
    token = pos.token
    assert token is not None
    payment = pos.pay(sandbox_code(pos.http, "01"))
    assert cli.json("admin", "terminal", "disable", pos.terminal.mid)["enabled"] is False
    # The live session stops working at once...
    stopped = pos.paycheck(payment["transId"], token=token)
    assert stopped.status_code in (401, 403), stopped.text
    assert_error(stopped, stopped.status_code, stopped.json()["error"]["code"])
    assert stopped.json()["error"]["code"] in ("SESSION_INVALID", "TERMINAL_DISABLED")
    refused = pos.request(new_key(), 100, sandbox_code(pos.http, "01"), token=token)
    assert refused.status_code in (401, 403)
    # ...and LOGIN says why.
    assert_error(pos.login(), 403, "TERMINAL_DISABLED", "mid")
    assert cli.json("admin", "terminal", "enable", pos.terminal.mid)["enabled"] is True
    assert pos.paycheck(payment["transId"], token=pos.login_ok()).json() == payment


def test_wrong_passwords_lock_login_until_an_admin_unlocks(pos: Pos, cli: Cli) -> None:
    assert pos.logout().status_code == 200
    for _ in range(5):
        assert_error(pos.login(password="WrongPass123"), 401, "WRONG_CREDENTIALS", "password")
    locked = pos.login()  # the right password, sixth attempt
    assert_error(locked, 429, "LOGIN_LOCKED")
    assert int(locked.headers["retry-after"]) > 0
    assert cli.json("admin", "terminal", "unlock", pos.terminal.mid)["unlocked"] is True
    token = pos.login_ok()
    assert _alive(pos, token)


# --- the idle timeout -----------------------------------------------------------------------------


@pytest.fixture
def idle_http(idle_server: KessaiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=idle_server.base_url, timeout=30.0) as client:
        yield client


@pytest.fixture
def idle_terminal(idle_provisioner: Provisioner) -> Terminal:
    return idle_provisioner.make()


def test_an_idle_session_expires_and_frees_the_mid(
    idle_http: httpx.Client, idle_terminal: Terminal
) -> None:
    device_a = Pos(idle_http, idle_terminal)
    token = device_a.login_ok()
    # Used more often than the timeout, the session stays alive past it.
    code = sandbox_code(idle_http, "01")
    started = time.monotonic()
    while time.monotonic() - started < IDLE_TIMEOUT_SECONDS + 1:
        assert device_a.identify(code).status_code == 200
        time.sleep(0.5)
    assert _alive(device_a, token)
    assert_error(Pos(idle_http, idle_terminal).login(), 409, "TERMINAL_IN_USE")
    # Left alone for longer than the timeout, it ends.
    time.sleep(IDLE_TIMEOUT_SECONDS + 0.5)
    assert_error(device_a.paycheck(GHOST_TRANS_ID), 401, "SESSION_INVALID")
    device_b = Pos(idle_http, idle_terminal)
    assert _alive(device_b, device_b.login_ok())


def test_calls_that_end_in_an_error_also_keep_the_session_alive(
    idle_http: httpx.Client, idle_terminal: Terminal
) -> None:
    device = Pos(idle_http, idle_terminal)
    token = device.login_ok()
    started = time.monotonic()
    while time.monotonic() - started < IDLE_TIMEOUT_SECONDS + 1:
        response = device.paycheck(GHOST_TRANS_ID, token=token)
        assert_error(response, 404, "PAYMENT_NOT_FOUND")
        time.sleep(0.5)
