"""`kessai`: run the gateway, provision merchants and terminals, drive the sandbox wallets."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.engine import Connection

from kessai import keys
from kessai.adapters import repository
from kessai.adapters.db import DEFAULT_DATABASE_URL
from kessai.cli import console_admin, output, provider_admin
from kessai.cli.database import opened, run_unit
from kessai.cli.demo import seed_and_describe
from kessai.clock import system_clock
from kessai.config import Settings, SettingsError, log_level_from_env
from kessai.connectors.sandbox import OUTCOMES, wallets
from kessai.connectors.secrets import SecretKeyInvalid
from kessai.console.config import ConsoleConfig
from kessai.domain.catalog import load_catalog
from kessai.service import admin as admin_service
from kessai.service import events

# How long a `kessai serve` worker may leave its supervisor's health check unanswered.
WORKER_HEALTHCHECK_SECONDS = 60
# The ASGI app `kessai serve` runs, as uvicorn imports it in every worker.
SERVED_APP = "kessai.api.app:app_from_env"

app = typer.Typer(
    help="Kessai, the QR-code payment gateway.", no_args_is_help=True, add_completion=False
)
admin_app = typer.Typer(
    help="Provision merchants, integrations and terminals.", no_args_is_help=True
)
merchant_app = typer.Typer(help="Merchants.", no_args_is_help=True)
integration_app = typer.Typer(
    help="Integrations (the os a POS system logs in with).", no_args_is_help=True
)
terminal_app = typer.Typer(help="Terminals (mid, password, passCode).", no_args_is_help=True)
sandbox_app = typer.Typer(help="The sandbox wallets (test mode).", no_args_is_help=True)
webhook_app = typer.Typer(help="Webhook endpoints and event deliveries.", no_args_is_help=True)
key_app = typer.Typer(help="The master key that protects secrets.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
admin_app.add_typer(merchant_app, name="merchant")
admin_app.add_typer(integration_app, name="integration")
admin_app.add_typer(terminal_app, name="terminal")
app.add_typer(sandbox_app, name="sandbox")
admin_app.add_typer(webhook_app, name="webhook")
admin_app.add_typer(key_app, name="key")
admin_app.add_typer(provider_admin.provider_app, name="provider")
admin_app.add_typer(console_admin.user_app, name="user")

T = TypeVar("T")
DatabaseOpt = Annotated[
    str,
    typer.Option(
        "--database", envvar="KESSAI_DATABASE_URL", help="SQLAlchemy URL or SQLite file path."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.command()
def migrate(database: DatabaseOpt = DEFAULT_DATABASE_URL) -> None:
    """Create or upgrade the database schema."""
    with opened(database):
        pass
    output.show(f"database at {database} is up to date")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1, max=64)] = 1,
    public_url: Annotated[
        str | None, typer.Option(help="Base URL customers' phones reach (sandbox QR links).")
    ] = None,
    worker: Annotated[
        bool, typer.Option("--worker", help="Also run the background jobs in every process.")
    ] = False,
) -> None:
    """Run the gateway over HTTP."""
    with opened(database):
        pass
    if worker:
        os.environ["KESSAI_WORKER_IN_SERVE"] = "true"
    _serve(host, port, database, workers, public_url)


@app.command("worker")
def worker_command(
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    once: Annotated[bool, typer.Option("--once", help="Run one pass and exit.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the background jobs: resolve unknown outcomes, expire QR codes, prune old rows.

    Safe to run on every instance at once: work is claimed in the database.
    """
    with opened(database):
        pass
    settings = Settings.from_env()

    from kessai.api.app import build_gateway  # noqa: PLC0415 - see _serve
    from kessai.service import worker as worker_module  # noqa: PLC0415

    async def main() -> None:
        gateway = build_gateway(database, settings)
        runner = worker_module.Worker(gateway)
        try:
            if once:
                report = await runner.run_once()
                output.emit(
                    {
                        "checked": report.checked,
                        "finished": report.finished,
                        "prunedSessions": report.pruned_sessions,
                        "prunedCodes": report.pruned_codes,
                        "webhooksAttempted": report.webhooks_attempted,
                        "webhooksDelivered": report.webhooks_delivered,
                        "errors": report.errors,
                    },
                    as_json,
                    f"checked {report.checked}, finished {report.finished}, pruned "
                    f"{report.pruned_sessions} sessions and {report.pruned_codes} codes, "
                    f"delivered {report.webhooks_delivered} of {report.webhooks_attempted} "
                    "webhook events tried",
                )
                return
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            output.show("worker running; Ctrl+C to stop")
            await runner.run_forever(stop)
        finally:
            await runner.aclose()
            await gateway.aclose()

    asyncio.run(main())


def _serve(host: str, port: int, database: str, workers: int, public_url: str | None) -> None:
    # Imported here: the web stack takes most of a second to load, which every other command
    # (provisioning, sandbox codes) would otherwise pay.
    import uvicorn  # noqa: PLC0415

    from kessai.cli import supervise  # noqa: PLC0415 - it imports uvicorn too

    os.environ["KESSAI_DATABASE_URL"] = database
    # An operator's KESSAI_PUBLIC_URL (the https address in front of a proxy) is kept: the
    # console's cookies are Secure only when it says https.
    os.environ["KESSAI_PUBLIC_URL"] = (
        public_url or os.environ.get("KESSAI_PUBLIC_URL") or f"http://{host}:{port}"
    )
    # Checked here, once: a bad KESSAI_* value then stops the command with its one-line message
    # (see main) instead of failing every worker process at its start.
    checked = Settings.from_env()
    ConsoleConfig.from_env(checked.public_url)
    log_level_from_env()
    pin = checked.pin_workers
    if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Several processes: metrics are summed over all of them at every scrape.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="kessai-metrics-")
    settings: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "access_log": False,
        "log_level": "info",
        "server_header": False,
        # A worker that leaves its supervisor's ping unanswered this long is killed. A spawned
        # worker can answer only once its interpreter has started and imported the `kessai`
        # command's modules, which on a busy machine takes longer than uvicorn's default 5 s:
        # with the default, new workers are killed while starting, again and again.
        "timeout_worker_healthcheck": WORKER_HEALTHCHECK_SECONDS,
    }
    if workers == 1 or not supervise.SUPPORTED:
        uvicorn.run(SERVED_APP, **settings)
        return
    # Several workers: each gets a listening socket of its own, so that the kernel spreads new
    # connections over them evenly (see `supervise`).
    status = supervise.serve(uvicorn.Config(SERVED_APP, **settings), pin=pin)
    if status != 0:
        raise typer.Exit(status)


# -- admin --------------------------------------------------------------------------------------


@merchant_app.command("create")
def merchant_create(
    name: Annotated[str, typer.Option(help="The merchant's name.")],
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a merchant."""
    now = system_clock()
    merchant_id = run_unit(database, lambda c: admin_service.create_merchant(c, name, now), as_json)
    output.emit(
        {"merchantId": merchant_id, "name": name}, as_json, f"merchant {merchant_id}: {name}"
    )


@integration_app.command("create")
def integration_create(
    name: Annotated[str, typer.Option(help="The POS system or app.")],
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Register an integration; prints its os."""
    now = system_clock()
    os_value = run_unit(database, lambda c: admin_service.create_integration(c, name, now), as_json)
    output.emit({"os": os_value, "name": name}, as_json, f"os {os_value}: {name}")


@terminal_app.command("create")
def terminal_create(
    merchant: Annotated[int, typer.Option(help="The merchant id.")],
    passcode: Annotated[
        str | None,
        typer.Option(
            "--passcode",
            help="A 4-digit passCode set by the merchant; '-' reads it from standard input.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="A label for the terminal.")] = None,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a terminal; prints its mid, password and passCode (shown only now)."""
    now = system_clock()
    passcode = _or_stdin(passcode)
    issued = run_unit(
        database,
        lambda c: admin_service.create_terminal(c, merchant, now, passcode=passcode, name=name),
        as_json,
    )
    output.emit(
        {
            "mid": issued.mid,
            "password": issued.password,
            "passCode": issued.passcode,
            "merchantId": issued.merchant_id,
        },
        as_json,
        f"mid {issued.mid}\npassword {issued.password}\npassCode {issued.passcode}\n"
        "(the password and passCode are not shown again)",
    )


@terminal_app.command("list")
def terminal_list(
    merchant: Annotated[int | None, typer.Option(help="Only this merchant's.")] = None,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """List terminals with their state."""
    now = system_clock()
    rows = run_unit(database, lambda c: admin_service.list_terminals(c, now, merchant), as_json)
    lines = [
        f"{r['mid']}  merchant {r['merchantId']}  "
        f"{'enabled' if r['enabled'] else 'DISABLED'}  "
        f"{'logged in from ' + r['key'] if r['loggedIn'] else 'logged out'}"
        f"{'  LOGIN LOCKED' if r['loginLocked'] else ''}"
        f"{'  REFUNDS LOCKED' if r['refundsLocked'] else ''}"
        for r in rows
    ]
    output.emit(rows, as_json, "\n".join(lines) or "no terminals")


MidArg = Annotated[str, typer.Argument(help="The terminal's 16-digit mid.")]


def _or_stdin(value: str | None) -> str | None:
    """An option's value, or for "-" the first line of standard input.

    So a secret can be kept out of the process list and the shell's history.
    """
    return sys.stdin.readline().strip() if value == "-" else value


@terminal_app.command("disable")
def terminal_disable(
    mid: MidArg, database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = False
) -> None:
    """Disable a terminal (its session ends; LOGIN is refused)."""
    now = system_clock()
    run_unit(database, lambda c: admin_service.set_enabled(c, mid, False, now), as_json)
    output.emit({"mid": mid, "enabled": False}, as_json, f"{mid} disabled")


@terminal_app.command("enable")
def terminal_enable(
    mid: MidArg, database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = False
) -> None:
    """Enable a terminal again."""
    now = system_clock()
    run_unit(database, lambda c: admin_service.set_enabled(c, mid, True, now), as_json)
    output.emit({"mid": mid, "enabled": True}, as_json, f"{mid} enabled")


@terminal_app.command("reset-password")
def terminal_reset_password(
    mid: MidArg, database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = False
) -> None:
    """Issue a new login password (shown once); the terminal's session ends."""
    now = system_clock()
    password = run_unit(database, lambda c: admin_service.reset_password(c, mid, now), as_json)
    output.emit({"mid": mid, "password": password}, as_json, f"mid {mid}\npassword {password}")


@terminal_app.command("set-passcode")
def terminal_set_passcode(
    mid: MidArg,
    passcode: Annotated[
        str | None,
        typer.Option(
            "--passcode",
            help="The merchant's own 4-digit passCode; '-' reads it from standard input "
            "(kept out of the process list and the shell's history). Without it, the gateway "
            "issues one.",
        ),
    ] = None,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Give a terminal a new passCode (shown once); wrong-passCode counts and locks start over."""
    now = system_clock()
    given = _or_stdin(passcode)
    code = run_unit(database, lambda c: admin_service.set_passcode(c, mid, now, given), as_json)
    output.emit(
        {"mid": mid, "passCode": code},
        as_json,
        f"mid {mid}\npassCode {code}\n(not shown again)",
    )


@terminal_app.command("unlock")
def terminal_unlock(
    mid: MidArg, database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = False
) -> None:
    """Lift the refund lock (wrong passCodes) and the login lock."""
    now = system_clock()
    run_unit(database, lambda c: admin_service.unlock(c, mid, now), as_json)
    output.emit({"mid": mid, "unlocked": True}, as_json, f"{mid} unlocked")


@terminal_app.command("logout")
def terminal_logout(
    mid: MidArg, database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = False
) -> None:
    """End the terminal's session (for a lost or replaced device)."""
    now = system_clock()
    ended = run_unit(database, lambda c: admin_service.force_logout(c, mid, now), as_json)
    output.emit(
        {"mid": mid, "sessionEnded": ended},
        as_json,
        f"{mid}: session ended" if ended else f"{mid}: no live session",
    )


@webhook_app.command("set")
def webhook_set(
    merchant: Annotated[int, typer.Option(help="The merchant id.")],
    url: Annotated[str, typer.Option(help="Where events are POSTed (https in production).")],
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Set a merchant's webhook endpoint; prints its new signing secret (shown only now)."""
    now = system_clock()
    secret = run_unit(database, lambda c: events.set_endpoint(c, merchant, url, now), as_json)
    output.emit(
        {"merchantId": merchant, "url": url, "secret": secret},
        as_json,
        f"endpoint {url}\nsecret {secret}\n(the secret is not shown again)",
    )


@webhook_app.command("events")
def webhook_events(
    merchant: Annotated[int | None, typer.Option(help="Only this merchant's.")] = None,
    status: Annotated[str | None, typer.Option(help="PENDING, DELIVERED or DEAD.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first (at most 1000).")] = 50,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """List webhook events with every delivery attempt."""
    rows = run_unit(database, lambda c: events.list_events(c, merchant, status, limit), as_json)
    lines = [
        f"{r['eventId']}  {r['type']:18s} {r['status']:9s} attempts {len(r['attempts'])}"
        + (
            f"  last: {r['attempts'][-1]['statusCode'] or r['attempts'][-1]['error']}"
            if r["attempts"]
            else ""
        )
        for r in rows
    ]
    output.emit(rows, as_json, "\n".join(lines) or "no events")


@webhook_app.command("resend")
def webhook_resend(
    event_id: Annotated[str, typer.Argument(help="The event id (evt_…).")],
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Queue an event for delivery again."""
    now = system_clock()
    run_unit(database, lambda c: events.resend(c, event_id, now), as_json)
    output.emit({"eventId": event_id, "status": "PENDING"}, as_json, f"{event_id} queued")


@key_app.command("generate")
def key_generate(as_json: JsonOpt = False) -> None:
    """Print a new master key for KESSAI_SECRET_KEY (give every instance the same one)."""
    key = keys.generate_key()
    output.emit({"key": key}, as_json, key)


def _key_unit(url: str, fn: Callable[[Connection], T], *, check_key: bool = True) -> T:
    """Run ``fn`` on the database; a master key it cannot use ends the command with one line."""
    with opened(url, check_key=check_key) as db:
        try:
            return db.run_sync(fn)
        except SecretKeyInvalid as exc:
            output.error(str(exc))
            raise typer.Exit(1) from exc


@key_app.command("reset-code-key")
def key_reset_code_key(
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: earlier transKeys no longer replay.")
    ] = False,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Replace the database's key for customer codes, when the master key sealing it is lost.

    A retry of a REQUEST or GET-QR-CODE made before then answers IDEMPOTENCY_CONFLICT instead of
    replaying (it never charges twice), and sandbox codes issued before are unknown.
    """
    if not yes:
        output.error("this cannot be undone: run again with --yes (see --help)")
        raise typer.Exit(2)
    now = system_clock()
    _key_unit(database, lambda conn: repository.reset_code_key(conn, now), check_key=False)
    sealed = bool(keys.configured())
    output.emit(
        {"codeKeyReset": True, "sealed": sealed},
        as_json,
        "the key for customer codes was replaced (restart every gateway process)"
        + (", sealed with the master key" if sealed else ""),
    )


@key_app.command("seal-codes")
def key_seal_codes(database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = False) -> None:
    """Seal the database's key for customer codes with every configured master key.

    Run it once every instance has the master key; again after adding a new key (second in the
    list), and after dropping an old one. A database created with a master key is sealed already.
    """
    sealed_with = _key_unit(database, repository.seal_code_key)
    output.emit(
        {"sealedWith": sealed_with},
        as_json,
        "the key for customer codes is sealed with master key(s) " + ", ".join(sealed_with),
    )


# -- sandbox ------------------------------------------------------------------------------------


@sandbox_app.command("code")
def sandbox_code(
    service: Annotated[str, typer.Argument(help="The 2-digit serviceId.")],
    outcome: Annotated[str, typer.Option(help=f"One of: {', '.join(OUTCOMES)}.")] = "success",
    count: Annotated[int, typer.Option(help="How many codes.")] = 1,
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Issue one-time customer codes that pay with OUTCOME."""
    now = system_clock()
    codes = run_unit(
        database, lambda c: wallets.issue_codes(c, service, outcome, count, now), as_json
    )
    output.emit(
        {"serviceId": service, "outcome": outcome, "codes": codes}, as_json, "\n".join(codes)
    )


def _settle(trans_id: str, approve: bool, database: str, as_json: bool) -> None:
    now = system_clock()
    status = run_unit(database, lambda c: wallets.settle(c, trans_id, approve, now), as_json)
    output.emit({"transId": trans_id, "sandboxStatus": status}, as_json, f"{trans_id}: {status}")


@sandbox_app.command("approve")
def sandbox_approve(
    trans_id: Annotated[str, typer.Argument(help="The transId.")],
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Approve a payment that waits for the customer (as the customer would in the app)."""
    _settle(trans_id, True, database, as_json)


@sandbox_app.command("decline")
def sandbox_decline(
    trans_id: Annotated[str, typer.Argument(help="The transId.")],
    database: DatabaseOpt = DEFAULT_DATABASE_URL,
    as_json: JsonOpt = False,
) -> None:
    """Decline a payment that waits for the customer."""
    _settle(trans_id, False, database, as_json)


@sandbox_app.command("services")
def sandbox_services(as_json: JsonOpt = False) -> None:
    """List the wallet services of the catalog with their serviceId."""
    rows = [
        {"serviceId": s.service_id, "name": s.name, "nameEn": s.name_en, "active": s.active}
        for s in load_catalog()
    ]
    lines = [f"{r['serviceId']}  {r['name']}{'' if r['active'] else '  (ended)'}" for r in rows]
    output.emit(rows, as_json, "\n".join(lines))


@sandbox_app.command("ledger")
def sandbox_ledger(database: DatabaseOpt = DEFAULT_DATABASE_URL, as_json: JsonOpt = True) -> None:
    """Print the sandbox wallets' own books."""
    rows = run_unit(database, wallets.ledger, as_json)
    output.emit(rows, True, "")


# -- demo ---------------------------------------------------------------------------------------


@app.command()
def demo(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    database: Annotated[
        str | None, typer.Option(help="Database URL (default: a fresh file in a temp folder).")
    ] = None,
) -> None:
    """Run the gateway with the sandbox wallets on a fresh embedded database, seeded to try."""
    folder = Path(tempfile.mkdtemp(prefix="kessai-demo-"))
    url = database or f"sqlite:///{folder / 'kessai.db'}"
    key_file: Path | None = None
    if not os.environ.get(keys.KEY_ENV) and not os.environ.get(keys.KEY_FILE_ENV):
        # The demo gets a master key of its own so that webhooks can be tried at once.
        key_file = folder / "master.key"
        key_file.write_text(keys.generate_key())
        key_file.chmod(0o600)
        os.environ[keys.KEY_FILE_ENV] = str(key_file)
    # The demo is the sandbox's: its wallets answer every payment.
    os.environ["KESSAI_SANDBOX_ENABLED"] = "true"
    base = f"http://{host}:{port}"
    with opened(url) as db:
        text = seed_and_describe(db, url, base, key_file)
    print(text, flush=True)
    _serve(host, port, url, 1, None)


def main() -> None:
    """Entry point of the `kessai` command."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except SettingsError as exc:
        output.error(str(exc))
        sys.exit(1)
