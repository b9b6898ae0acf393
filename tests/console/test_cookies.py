"""Cookies of a console deployed behind https, checked in-process (no browser needed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from litestar.testing import TestClient

from kessai.adapters.db import Database
from kessai.adapters.migrate import upgrade
from kessai.api.app import create_app
from kessai.config import Settings
from kessai.console import users
from kessai.security import hash_secret
from kessai.service import admin

PASSWORD = "a-long-password-1"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'kessai.db'}"
    db = Database(url)
    try:
        upgrade(db)
        now = datetime.now(UTC)

        def seed(conn: object) -> None:
            merchant = admin.create_merchant(conn, "本番商店", now)  # type: ignore[arg-type]
            users.create_user(
                conn,  # type: ignore[arg-type]
                merchant_id=merchant,
                email="owner@pay.example.jp",
                role="owner",
                password_hash=hash_secret(PASSWORD),
                now=now,
            )

        db.run_sync(seed)
    finally:
        db.close()
    yield url


def _token(html: str) -> str:
    found = re.search(r'name="_csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_behind_https_the_cookies_are_secure_and_host_only(database_url: str) -> None:
    app = create_app(database_url, Settings(public_url="https://pay.example.jp"))
    with TestClient(app, base_url="https://pay.example.jp") as client:
        page = client.get("/console/login")
        assert 'id="https-hint"' not in page.text
        csrf_cookie = page.headers["set-cookie"]
        assert csrf_cookie.startswith("__Host-kessai_csrf=")
        assert "Secure" in csrf_cookie and "HttpOnly" in csrf_cookie
        answer = client.post(
            "/console/login",
            data={
                "_csrf": _token(page.text),
                "email": "OWNER@pay.example.jp",
                "password": PASSWORD,
            },
            follow_redirects=False,
        )
        assert answer.status_code == 303
        session = answer.headers["set-cookie"]
        assert session.startswith("__Host-kessai_session=")
        for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/"):
            assert flag in session
        assert "Domain" not in session
        listed = client.get("/console/payments")
        assert listed.status_code == 200
        assert "本番商店" in listed.text
        assert listed.headers["x-frame-options"] == "DENY"
        assert listed.headers["cache-control"] == "no-store"


def test_a_secure_console_opened_over_http_says_why_login_cannot_stick(
    database_url: str,
) -> None:
    app = create_app(database_url, Settings(public_url="http://0.0.0.0:8000"))
    with TestClient(app) as client:  # http://testserver.local
        page = client.get("/console/login")
        assert 'id="https-hint"' in page.text
        assert "KESSAI_CONSOLE_COOKIE_SECURE" in page.text
