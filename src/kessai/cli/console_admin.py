"""`kessai admin user …`: the merchant console's users (owner or staff), non-interactively.

    kessai admin user create --merchant 1 --email owner@shop.example --role owner --json
    kessai admin user list [--merchant 1] --json
    kessai admin user unlock --email owner@shop.example
    kessai admin user reset-password --email owner@shop.example [--password P]

A password left out is issued (16 letters and digits) and printed once; only its argon2 hash is
stored.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from kessai.adapters.db import DEFAULT_DATABASE_URL
from kessai.cli import output
from kessai.cli.database import run_unit
from kessai.clock import system_clock
from kessai.console import users
from kessai.domain.errors import KessaiError
from kessai.security import hash_secret

user_app = typer.Typer(
    help="Merchant console users (owner: refunds and terminals; staff: view).",
    no_args_is_help=True,
)

DatabaseOpt = Annotated[
    str,
    typer.Option(
        "--database", envvar="KESSAI_DATABASE_URL", help="SQLAlchemy URL or SQLite file path."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
EmailOpt = Annotated[str, typer.Option(help="The user's login e-mail address.")]
PasswordOpt = Annotated[
    str | None,
    typer.Option(help="The password (12 to 128 characters); issued when left out."),
]


def _password(given: str | None, as_json: bool) -> tuple[str, bool]:
    """The password to set and whether it was issued here."""
    if given is None:
        return users.new_console_password(), True
    try:
        return users.check_password(given), False
    except KessaiError as exc:
        raise output.refused(exc, as_json) from exc


@user_app.command("create")
def user_create(
    merchant: Annotated[int, typer.Option(help="The merchant id.")],
    email: EmailOpt,
    role: Annotated[str, typer.Option(help="owner or staff.")],
    password: PasswordOpt = None,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a console user; prints the password when it was issued (shown only now)."""
    try:
        users.check_role(role)
        address = users.normalise_email(email)
    except KessaiError as exc:
        raise output.refused(exc, as_json) from exc
    secret, issued = _password(password, as_json)
    digest = hash_secret(secret)
    now = system_clock()
    user_id = run_unit(
        database,
        lambda conn: users.create_user(
            conn, merchant_id=merchant, email=address, role=role, password_hash=digest, now=now
        ),
        as_json,
    )
    data: dict[str, Any] = {
        "userId": user_id,
        "merchantId": merchant,
        "email": address,
        "role": role,
        "passwordIssued": issued,
    }
    if issued:
        data["password"] = secret
    text = f"console user {user_id}: {address} ({role}) of merchant {merchant}"
    if issued:
        text += f"\npassword {secret}\n(the password is not shown again)"
    output.emit(data, as_json, text)


@user_app.command("list")
def user_list(
    merchant: Annotated[int | None, typer.Option(help="Only this merchant's.")] = None,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """List console users with their role and lock state."""
    rows = run_unit(database, lambda conn: users.list_users(conn, merchant), as_json)
    lines = [
        f"{r['userId']}  merchant {r['merchantId']}  {r['email']}  {r['role']}"
        f"{'' if r['enabled'] else '  DISABLED'}{'  LOCKED' if r['lockedUntil'] else ''}"
        for r in rows
    ]
    output.emit(rows, as_json, "\n".join(lines) or "no console users")


@user_app.command("unlock")
def user_unlock(
    email: EmailOpt, database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = False
) -> None:
    """Lift the login lock after repeated wrong passwords."""
    now = system_clock()
    run_unit(database, lambda conn: users.unlock_user(conn, email, now), as_json)
    output.emit({"email": email.strip().lower(), "unlocked": True}, as_json, f"{email} unlocked")


@user_app.command("reset-password")
def user_reset_password(
    email: EmailOpt,
    password: PasswordOpt = None,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Set a new password (issued when left out); the user's sessions end."""
    secret, issued = _password(password, as_json)
    digest = hash_secret(secret)
    now = system_clock()
    run_unit(database, lambda conn: users.set_password(conn, email, digest, now), as_json)
    data: dict[str, Any] = {"email": email.strip().lower(), "passwordIssued": issued}
    if issued:
        data["password"] = secret
    output.emit(
        data, as_json, f"{email}: new password {secret}" if issued else f"{email}: password set"
    )
