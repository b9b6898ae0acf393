"""Console users: the CLI that makes them, login, lockout, logout, cookies and roles."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from playwright.sync_api import Page, expect

from .support import (
    OWNER_PASSWORD,
    STAFF_PASSWORD,
    Provisioner,
    Server,
    Shop,
    cli_json,
    login,
    run_cli,
)

pytestmark = pytest.mark.e2e


def _login_form(client: httpx.Client) -> str:
    """Open the login page like a browser; answers the form's CSRF token."""
    page = client.get("/console/login")
    assert page.status_code == 200
    found = re.search(r'name="_csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_the_cli_creates_owners_and_staff_and_issues_passwords(server: Server, shop: Shop) -> None:
    merchant = str(shop.merchant_id)
    create = ("admin", "user", "create", "--merchant")
    attempts = {
        "issued": (*create, merchant, "--email", "Issued.User@Shop.Example", "--role", "staff"),
        "taken": (*create, merchant, "--email", shop.owner.upper(), "--role", "owner"),
        "role": (*create, merchant, "--email", "x@shop.example", "--role", "admin"),
        "merchant": (*create, "99999", "--email", "y@shop.example", "--role", "owner"),
        "password": (
            *create,
            merchant,
            "--email",
            "z@shop.example",
            "--role",
            "owner",
            "--password",
            "short",
        ),
        "email": (*create, merchant, "--email", "not-an-address", "--role", "owner"),
    }
    # Independent commands, run at once: each costs seconds of interpreter start-up.
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(
            zip(
                attempts,
                pool.map(
                    lambda args: run_cli(server.database_url, *args, "--json", check=False),
                    attempts.values(),
                ),
                strict=True,
            )
        )
    made = json.loads(done.pop("issued").stdout)
    assert made["email"] == "issued.user@shop.example"
    assert (made["role"], made["passwordIssued"]) == ("staff", True)
    issued = made["password"]
    assert len(issued) == 16 and issued.isalnum()
    for expected_field, answer in done.items():
        assert answer.returncode == 2, (expected_field, answer.stdout, answer.stderr)
        error = json.loads(answer.stdout)["error"]
        if expected_field == "merchant":
            assert error["code"] == "NOT_FOUND"
        else:
            assert error["field"] == {"taken": "email"}.get(expected_field, expected_field)

    # The issued password logs in; the session cookie is HttpOnly and SameSite, and Secure is
    # left off only because this console runs on http://127.0.0.1.
    with httpx.Client(base_url=server.base_url) as client:
        token = _login_form(client)
        answer = client.post(
            "/console/login",
            data={"_csrf": token, "email": "issued.user@shop.example", "password": issued},
        )
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/payments"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("kessai_session=")
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie
        listed = client.get("/console/payments")
        assert listed.status_code == 200 and "スタッフ" in listed.text


def test_a_login_form_posted_without_its_token_is_refused(server: Server, shop: Shop) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        _login_form(client)
        answer = client.post(
            "/console/login", data={"email": shop.owner, "password": OWNER_PASSWORD}
        )
        assert answer.status_code == 403
        assert "set-cookie" not in answer.headers or "kessai_session" not in answer.headers.get(
            "set-cookie", ""
        )


def test_a_sessions_csrf_token_works_and_is_not_kept_in_the_database(
    server: Server, shop: Shop
) -> None:
    # Anyone with a copy of the database could otherwise forge a logged-in user's forms.
    with httpx.Client(base_url=server.base_url) as client:
        form_token = _login_form(client)
        answer = client.post(
            "/console/login",
            data={"_csrf": form_token, "email": shop.owner, "password": OWNER_PASSWORD},
        )
        assert answer.status_code == 303
        page = client.get("/console/terminals")
        found = re.search(r'name="_csrf" value="([^"]+)"', page.text)
        assert found is not None
        session_csrf = found.group(1)
        assert session_csrf != form_token
        assert client.post("/console/logout", data={"_csrf": session_csrf}).status_code == 303
    with sqlite3.connect(server.database_path) as db:
        kept = [row[0] for row in db.execute("SELECT csrf_token FROM console_sessions")]
    assert kept and session_csrf not in kept
    database = server.database_path.read_bytes()
    wal = server.database_path.with_name(server.database_path.name + "-wal")
    if wal.exists():
        database += wal.read_bytes()
    assert session_csrf.encode() not in database


def test_repeated_wrong_passwords_lock_the_account(
    page: Page, server: Server, shop: Shop, provisioner: Provisioner
) -> None:
    email = provisioner.user(shop.merchant_id, "staff", STAFF_PASSWORD)
    page.goto("/console/login")
    for _ in range(4):
        page.fill("input[name=email]", email)
        page.fill("input[name=password]", "wrong-password-123")
        page.click("#login")
        expect(page.locator("#error")).to_contain_text("正しくありません")
    page.fill("input[name=password]", "wrong-password-123")
    page.click("#login")
    expect(page.locator("#error")).to_contain_text("ロック")
    # Even the right password is refused while the lock lasts.
    page.fill("input[name=password]", STAFF_PASSWORD)
    page.click("#login")
    expect(page.locator("#error")).to_contain_text("ロック")
    # An administrator lifts it.
    cli_json(server.database_url, "admin", "user", "unlock", "--email", email)
    login(page, email, STAFF_PASSWORD)
    expect(page.locator("#user-email")).to_have_text(email)


def test_logout_ends_the_session_on_the_server(
    page: Page, shop: Shop, screenshot: Callable[[Page, str], None]
) -> None:
    page.goto("/console/terminals")
    page.wait_for_url("**/console/login?next=/console/terminals")
    expect(page.locator("#info")).to_contain_text("ログインしてください")
    screenshot(page, "login")
    page.fill("input[name=email]", shop.owner)
    page.fill("input[name=password]", OWNER_PASSWORD)
    page.click("#login")
    page.wait_for_url("**/console/terminals")  # back where the visitor was going
    session = [c for c in page.context.cookies() if c["name"] == "kessai_session"]
    assert len(session) == 1 and session[0]["httpOnly"]
    page.click("#logout")
    page.wait_for_url("**/console/login?bye=1")
    expect(page.locator("#notice")).to_have_text("ログアウトしました。")
    # The old cookie, replayed, opens nothing: the session ended on the server.
    page.context.add_cookies([session[0]])  # type: ignore[list-item]
    page.goto("/console/payments")
    page.wait_for_url("**/console/login**")
