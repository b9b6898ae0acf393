"""What the attack tests share: a gateway of their own, attackers with an address each, and a
look at what the database holds (to prove that a refused attack changed nothing).

The gateway is a real `kessai serve` on 127.0.0.1 (tests/e2e/support.py). uvicorn trusts the
X-Forwarded-For header of a proxy on 127.0.0.1 by default (``FORWARDED_ALLOW_IPS``), so a test
plays a client at any address by sending that header, as a reverse proxy on the same host would;
the test that proves the header is *not* trusted from elsewhere starts its gateway with another
trusted proxy address.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
from typer.testing import CliRunner

from e2e.support import (
    FAST_SETTINGS,
    Cli,
    CliBatch,
    KessaiServer,
    Provisioner,
    start_server,
)

# Failed logins one address may make on the attack gateway (small, so tests reach it quickly;
# a long window, so that the allowance does not come back while a test looks at it).
ADDRESS_LIMIT: Final = 6
ATTACK_SETTINGS: Final[Mapping[str, str]] = {
    **FAST_SETTINGS,
    "KESSAI_LOGIN_ADDRESS_MAX_FAILURES": str(ADDRESS_LIMIT),
    "KESSAI_LOGIN_ADDRESS_WINDOW_SECONDS": "3600",
}
# KESSAI_ATTACK_LONG=1 runs every hostile string against every field, not a sample of them.
LONG: Final = os.environ.get("KESSAI_ATTACK_LONG", "") not in ("", "0")
GHOST_TRANS_ID: Final = "1000000000"

_addresses = itertools.count(1)


def fresh_address() -> str:
    """A client address no other test in this process uses (198.18.0.0/15, for benchmarks)."""
    n = next(_addresses)
    return f"198.{18 + n // 65536 % 2}.{n // 256 % 256}.{n % 256}"


def client_at(base_url: str, address: str) -> httpx.Client:
    """An HTTP client that the gateway sees as coming from ``address`` (through the proxy)."""
    return httpx.Client(base_url=base_url, timeout=60.0, headers={"X-Forwarded-For": address})


@dataclass
class Gateway:
    """A gateway of the attack tests: the server, its CLI and its provisioning."""

    server: KessaiServer
    admin: CliBatch
    cli: Cli
    provisioner: Provisioner

    @property
    def base_url(self) -> str:
        """Where it listens."""
        return self.server.base_url

    @property
    def database_url(self) -> str:
        """Its database."""
        return self.server.database_url

    def terminals(self, merchant_id: int) -> dict[str, dict[str, Any]]:
        """`kessai admin terminal list --merchant M --json`, by mid."""
        rows = self.admin.json("admin", "terminal", "list", "--merchant", str(merchant_id))
        return {row["mid"]: row for row in rows}


@contextlib.contextmanager
def running_gateway(
    workdir: Path,
    settings: Mapping[str, str] = ATTACK_SETTINGS,
    database_url: str | None = None,
) -> Iterator[Gateway]:
    """Start a gateway with ``settings``; stop it (and its helpers) afterwards."""
    server = start_server(workdir, settings, database_url)
    admin = CliBatch(server.database_url)
    provisioner = Provisioner(admin, ahead=0)
    try:
        yield Gateway(server, admin, Cli(server.database_url), provisioner)
    finally:
        provisioner.close()
        admin.close()
        server.stop()


# --- what the database holds ----------------------------------------------------------------------

# Per table, the columns an attack must not change. Timestamps of mere use (last_seen_at,
# idle_expires_at) are left out: a refused call from the legitimate terminal may touch them.
WATCHED: Final[Mapping[str, Sequence[str]]] = {
    "payments": ("*",),
    "refunds": ("*",),
    "sandbox_charges": ("*",),
    "sandbox_refunds": ("*",),
    "webhook_events": ("*",),
    "audit_events": ("*",),
    "merchants": ("*",),
    "provider_settings": ("*",),
    "sessions": ("id", "token_hash", "terminal_id", "device_key", "ended_at", "end_reason"),
    "terminals": (
        "id",
        "mid",
        "merchant_id",
        "password_hash",
        "passcode_hash",
        "enabled",
        "login_failures",
        "login_locked_until",
        "passcode_failures",
        "passcode_locked_until",
    ),
}


def sqlite_file(database_url: str) -> Path:
    """The file of a ``sqlite:///`` URL."""
    if not database_url.startswith("sqlite:///"):
        raise ValueError(f"not a SQLite URL: {database_url}")
    return Path(database_url.removeprefix("sqlite:///"))


def database_state(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every watched row of the gateway's SQLite database, read as another process would."""
    path = sqlite_file(database_url)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        state = {}
        for table, columns in WATCHED.items():
            listed = ", ".join(columns)
            state[table] = sorted(
                conn.execute(f"SELECT {listed} FROM {table}").fetchall(),
                key=repr,
            )
        return state
    finally:
        conn.close()


def assert_same_state(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Nothing an attack may not change has changed (names the tables that did)."""
    changed = {
        table: {"before": len(before[table]), "after": len(after[table])}
        for table in before
        if before[table] != after[table]
    }
    assert not changed, f"the attack changed the database: {changed}"


# --- the console ----------------------------------------------------------------------------------

_CSRF = re.compile(r'name="_csrf" value="([^"]+)"')


def console_login(http: httpx.Client, email: str, password: str) -> httpx.Response:
    """Log in to the console as a browser would: the form's CSRF token, then the form."""
    form = http.get("/console/login")
    assert form.status_code == 200, form.text
    match = _CSRF.search(form.text)
    assert match is not None, "the login form carries no CSRF token"
    return http.post(
        "/console/login",
        data={"email": email, "password": password, "_csrf": match.group(1), "next": ""},
    )


# --- many requests at once ------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request of a burst."""

    method: str
    url: str
    json: Any = None
    headers: Mapping[str, str] | None = None


def burst(calls: Sequence[Call]) -> list[httpx.Response]:
    """Send every call at the same moment (as far as one process can) and answer the answers."""

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(calls))
        async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.request(c.method, c.url, json=c.json, headers=dict(c.headers or {}))
                        for c in calls
                    )
                )
            )

    return asyncio.run(send_all())


def error_code(response: httpx.Response) -> str:
    """The error code of an error answer ("" for a success)."""
    if response.status_code < 400:
        return ""
    return str(response.json()["error"]["code"])


class Admin:
    """`kessai …` in-process, with the master key, as an operator runs it (quicker than a
    process per command; the command, its arguments and its JSON output are the real ones)."""

    def __init__(self, database_url: str, master_key: str) -> None:
        self.database_url = database_url
        self.env = {"KESSAI_SECRET_KEY": master_key}

    def __call__(self, *args: str) -> Any:
        """Run ``kessai ARGS --database URL --json``; answer its JSON (fail the test otherwise)."""
        from kessai.cli.main import app  # noqa: PLC0415 - only the tests that need it load it

        result = CliRunner().invoke(
            app, [*args, "--database", self.database_url, "--json"], env=self.env
        )
        assert result.exit_code == 0, f"kessai {' '.join(args)}: {result.output}"
        return json.loads(result.stdout)
