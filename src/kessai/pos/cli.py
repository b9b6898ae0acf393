"""`kessai-pos`: a shop register on the command line, built on the terminal SDK.

Exit codes (also in docs/pos.md), so that scripts can act on the outcome without parsing text:

====  =========================================================================================
0     done; for pay/qr/status: the payment is paid (also when refunded later); for refund: the
      refund succeeded; for recover: every journal entry is resolved
1     error: nothing happened (bad settings, refused by the gateway, network down before sending)
2     usage error (a missing or malformed argument)
3     declined: the payment is definitely not paid (FAILED, EXPIRED, CANCELED), or the wallet
      refused the refund
4     pending or unknown: not final yet, the answer was lost, or waiting for an accepted
      payment failed — never a decline; find out with `kessai-pos status` or `kessai-pos recover`
130   interrupted (Ctrl-C); a payment already sent goes on — check it with `status`
====  =========================================================================================
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn

import typer
from rich.console import Console

from kessai.client import (
    ConfigurationError,
    GatewayError,
    Journal,
    OutcomeUnknown,
    Payment,
    PaymentKind,
    PaymentNotFound,
    RefundStatus,
    Terminal,
    TerminalConfig,
    TerminalError,
    new_trans_key,
)
from kessai.client.config import (
    ENV_PREFIX,
    default_config_path,
    default_journal_path,
    read_config_file,
    write_config_file,
)
from kessai.pos import render

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_DECLINED: Final = 3
EXIT_PENDING: Final = 4
EXIT_INTERRUPTED: Final = 130

# Extra time, past a QR code's deadline, for the gateway to withdraw it at the wallet.
QR_EXPIRY_MARGIN_S: Final = 15.0

app = typer.Typer(
    help="kessai-pos: a QR-code payment register on the command line (Kessai terminal SDK).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@dataclass(frozen=True, slots=True)
class Options:
    """Options given before the command."""

    config_file: Path | None
    verbose: bool


JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # A pipe or a log gets whole lines and wide tables, not an 80-column guess.
    width = None if stream is not None and stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _stdout() -> Console:
    return _console(stderr=False)


def _stderr() -> Console:
    return _console(stderr=True)


def _options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Options) else Options(None, False)


def _emit_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, default=render.json_ready), flush=True)


def _exit(code: int) -> NoReturn:
    raise typer.Exit(code)


def _fail(
    as_json: bool,
    code: str,
    message: str,
    status: int,
    found: dict[str, Any] | None = None,
    **extra: Any,
) -> NoReturn:
    if as_json:
        _emit_json({"error": {"code": code, "message": message, **extra}, **(found or {})})
    else:
        _stderr().print(f"[red]error[/red] {code}: {message}", highlight=False)
    _exit(status)


@contextmanager
def _guard(
    as_json: bool, found: dict[str, Any] | None = None, retry_option: str | None = None
) -> Iterator[None]:
    """Turn the SDK's errors into a message and an exit code.

    ``found`` is what the command learned before it failed (start-up recovery's report), added
    to its JSON output. ``retry_option`` is the command's option that repeats the same request
    (``--trans-key``, ``--refund-key``): an unknown outcome is retryable only with that key.
    """
    extra = found if found is not None else {}
    try:
        yield
    except OutcomeUnknown as exc:
        if exc.refund_key is not None:
            key = exc.refund_key if retry_option == "--refund-key" else None
        else:
            key = exc.trans_key if retry_option == "--trans-key" else None
        if as_json:
            error: dict[str, Any] = {
                "code": "OUTCOME_UNKNOWN",
                "message": exc.message,
                "transKey": exc.trans_key,
                "refundKey": exc.refund_key,
                "transId": exc.trans_id,
                "retryable": key is not None,
            }
            if key is not None:
                error["retryWith"] = [retry_option, key]
            _emit_json({"error": error, **extra})
        else:
            console = _stderr()
            console.print("[bold yellow]UNKNOWN[/bold yellow] " + exc.message, highlight=False)
            if exc.refund_key is not None:
                console.print(
                    f"Do NOT treat this refund as failed, and do not refund again with a new "
                    f"key. Run the same command again with `--refund-key {exc.refund_key}` "
                    "(the same key refunds at most once), or run `kessai-pos recover`.",
                    highlight=False,
                )
            else:
                retry = (
                    f" Running the same command again with `--trans-key {key}` is safe (the "
                    "same key charges at most once)."
                    if key is not None
                    else ""
                )
                console.print(
                    "Do NOT treat this as declined, and do not ask the customer to pay again. "
                    f"Run `kessai-pos recover` to learn the outcome.{retry}",
                    highlight=False,
                )
        _exit(EXIT_PENDING)
    except GatewayError as exc:
        _fail(
            as_json,
            exc.code,
            exc.message,
            EXIT_ERROR,
            extra,
            field=exc.field,
            retryable=exc.retryable,
            requestId=exc.request_id,
        )
    except TerminalError as exc:
        _fail(as_json, type(exc).__name__, exc.message, EXIT_ERROR, extra, retryable=exc.retryable)


def _terminal(ctx: typer.Context) -> Terminal:
    """The register's terminal, from the config file and KESSAI_TERMINAL_* variables."""
    # recover() runs explicitly where the register starts a sale, so that its findings show.
    return Terminal(config_file=_options(ctx).config_file, recover_on_start=False)


def _payment_exit(payment: Payment) -> int:
    if payment.is_paid:
        return EXIT_OK
    if payment.is_unpaid:
        return EXIT_DECLINED
    return EXIT_PENDING


def _show(payment: Payment, as_json: bool, found: dict[str, Any] | None = None) -> None:
    if as_json:
        _emit_json({**payment.to_dict(), **(found or {})})
    else:
        render.print_payment(_stdout(), payment)


def _wait_failed(
    payment: Payment, error: TerminalError, as_json: bool, found: dict[str, Any]
) -> NoReturn:
    """The gateway accepted the payment, but waiting for its outcome failed: it is unknown."""
    if as_json:
        failure = {"code": getattr(error, "code", type(error).__name__), "message": error.message}
        _emit_json({**payment.to_dict(), "waitError": failure, **found})
    else:
        render.print_payment(_stdout(), payment)
        console = _stderr()
        console.print(
            f"[bold yellow]UNKNOWN[/bold yellow] could not learn how payment {payment.trans_id} "
            f"ended ({error.message}). The gateway accepted it: it may still be paid.",
            highlight=False,
        )
        console.print(
            "Do NOT treat this as declined, and do not ask the customer to pay again. Check "
            f"with `kessai-pos status {payment.trans_id}` (transKey {payment.trans_key}) or "
            "`kessai-pos recover`.",
            highlight=False,
        )
    _exit(EXIT_PENDING)


def _wait(
    terminal: Terminal,
    payment: Payment,
    timeout_s: float | None,
    deadline: datetime | None,
    as_json: bool,
    found: dict[str, Any],
) -> Payment:
    """Wait for a PENDING payment while showing why, live on a terminal, as lines otherwise.

    The gateway has the payment: if waiting fails, its outcome is unknown (``_wait_failed``),
    never an error that would read as "nothing happened".
    """
    console = _stderr()
    waiting = render.Waiting(render.waiting_reason(payment), payment.trans_id, deadline)
    if not console.is_terminal:
        console.print(waiting.line(), highlight=False)
    seen = [waiting.reason]

    def on_update(update: Payment) -> None:
        waiting.reason = render.waiting_reason(update)
        if not update.is_final and waiting.reason != seen[-1] and not console.is_terminal:
            console.print(waiting.line(), highlight=False)
        seen.append(waiting.reason)

    try:
        if console.is_terminal:
            with console.status(waiting):
                return terminal.wait(payment.trans_id, timeout_s, on_update=on_update)
        return terminal.wait(payment.trans_id, timeout_s, on_update=on_update)
    except TerminalError as exc:
        _wait_failed(payment, exc, as_json, found)
    except KeyboardInterrupt:
        console.print(
            f"Stopped waiting. The payment goes on: `kessai-pos status {payment.trans_id}`."
        )
        _exit(EXIT_INTERRUPTED)


def _start_up(terminal: Terminal, as_json: bool, found: dict[str, Any]) -> None:
    """Recover what an earlier run left unfinished, before a new sale; say what was found.

    With --json, the report goes into the command's output as ``recovered`` (``found``).
    """
    if not terminal.journal.entries(unresolved=True, mid=terminal.config.mid, limit=1) and not (
        terminal.journal.refunds(unresolved=True, mid=terminal.config.mid, limit=1)
    ):
        return
    try:
        report = terminal.recover()
    except TerminalError as exc:
        _stderr().print(f"[yellow]start-up recovery failed[/yellow]: {exc}", highlight=False)
        found["recoveryError"] = exc.message
        return
    found["recovered"] = report.to_dict()
    if not as_json:
        render.print_recovery(_stderr(), report)


# -- options before the command ------------------------------------------------------------------


@app.callback()
def options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="KESSAI_TERMINAL_CONFIG",
            help="The config file (default ~/.config/kessai/terminal.toml).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every request.")] = False,
) -> None:
    """A QR-code payment register: take payments, show QR codes, refund, recover after crashes."""
    ctx.obj = Options(config, verbose)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="kessai-pos: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


# -- configure, login, logout --------------------------------------------------------------------


@app.command()
def configure(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="The gateway's URL.")] = None,
    mid: Annotated[str | None, typer.Option(help="The terminal's 16-digit mid.")] = None,
    password: Annotated[str | None, typer.Option(help="The 12-character login password.")] = None,
    os_id: Annotated[str | None, typer.Option("--os", help="The integration's 6-digit os.")] = None,
    key: Annotated[
        str | None, typer.Option(help="This device's ID (default: its MAC address).")
    ] = None,
    passcode: Annotated[
        str | None, typer.Option(help="The 4-digit refund passCode (else asked at refund).")
    ] = None,
    journal: Annotated[Path | None, typer.Option(help="Where to keep the journal.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the register's settings to its config file (owner-only); asks for what is missing."""
    path = _options(ctx).config_file or default_config_path()
    with _guard(as_json):
        current = read_config_file(path) if path.exists() else {}
        given = {
            "base_url": url,
            "mid": mid,
            "password": password,
            "os": os_id,
            "key": key,
            "pass_code": passcode,
            "journal_path": journal.expanduser().resolve() if journal else None,
        }
        values = {**current, **{k: v for k, v in given.items() if v is not None}}
        prompts = {
            "base_url": ("Gateway URL", False),
            "mid": ("mid (16 digits)", False),
            "password": ("Login password", True),
            "os": ("os (6 digits)", False),
        }
        for name, (label, secret) in prompts.items():
            if not values.get(name):
                values[name] = typer.prompt(label, hide_input=secret, err=True)
        if values.get("journal_path") is not None:
            values["journal_path"] = Path(values["journal_path"])
        config = TerminalConfig(**values)  # checks every format before anything is written
        settings: dict[str, Any] = {
            "url": config.base_url,
            "mid": config.mid,
            "password": config.password,
            "os": config.os,
            "key": config.key,
            "pass_code": config.pass_code,
            "journal": str(config.journal_path) if config.journal_path else None,
        }
        for table in ("poll", "retry"):
            if table in current:
                settings[table] = {
                    f: getattr(current[table], f) for f in current[table].__dataclass_fields__
                }
        write_config_file(path, settings)
    summary = {
        "configFile": str(path),
        "url": config.base_url,
        "mid": config.mid,
        "os": config.os,
        "key": config.key,
        "passCodeConfigured": config.pass_code is not None,
        "journal": str(config.journal),
    }
    if as_json:
        _emit_json(summary)
    else:
        _stdout().print(
            f"Saved {path} (readable by you only).\n"
            f"  gateway {config.base_url}\n  mid {config.mid}   os {config.os}   key "
            f"{config.key or '(this machine)'}\n  refund passCode "
            f"{'configured' if config.pass_code else 'asked at each refund'}\n"
            f"  journal {config.journal}\nNext: kessai-pos login"
        )


@app.command()
def login(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Log in to the gateway now (every other command logs in by itself when needed)."""
    with _guard(as_json), _terminal(ctx) as terminal:
        session = terminal.login()
        data = {
            "mid": terminal.config.mid,
            "key": terminal.config.device_key,
            "expiresAt": session.expires_at.isoformat() if session.expires_at else None,
        }
    if as_json:
        _emit_json(data)
    else:
        _stdout().print(
            f"Logged in: mid {data['mid']} from device {data['key']}; the session lasts "
            f"until LOGOUT (idle expiry {render.local_time(session.expires_at)})."
        )


@app.command()
def logout(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Log out (end this register's session at the gateway)."""
    with _guard(as_json), _terminal(ctx) as terminal:
        terminal.logout()
    if as_json:
        _emit_json({"loggedOut": True})
    else:
        _stdout().print("Logged out.")


# -- taking payments -----------------------------------------------------------------------------


def _read_scanned_code(as_json: bool) -> str:
    """One line from standard input: a USB barcode scanner types the code and Enter."""
    stdin = sys.stdin
    if stdin is None:  # started without standard input at all (a service, CI)
        _fail(as_json, "NO_CODE", "no code given and no standard input to read one", EXIT_ERROR)
    if stdin.isatty():
        _stderr().print("Scan the customer's code (or type it) and press Enter:")
    line = stdin.readline().strip()
    if not line:
        _fail(as_json, "NO_CODE", "no code was scanned (standard input was empty)", EXIT_ERROR)
    return line


@app.command()
def pay(
    ctx: typer.Context,
    amount: Annotated[int, typer.Argument(help="The amount in yen (an integer: 1200 is ¥1,200).")],
    code: Annotated[
        str | None,
        typer.Option(help="The customer's code; without it, one line is read from stdin."),
    ] = None,
    service: Annotated[
        str | None, typer.Option(help="The serviceId the code must belong to (checked).")
    ] = None,
    trans_key: Annotated[
        str | None, typer.Option(help="Reuse this transKey (to repeat the same payment safely).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until a pending payment is final.")
    ] = True,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait at most (default: the poll schedule).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Charge the code the customer shows (REQUEST); waits while the customer confirms."""
    scanned = code if code is not None else _read_scanned_code(as_json)
    found: dict[str, Any] = {}
    with _guard(as_json, found, "--trans-key"), _terminal(ctx) as terminal:
        _start_up(terminal, as_json, found)
        payment = terminal.pay(amount, scanned, service_id=service, trans_key=trans_key)
        if not payment.is_final and wait:
            payment = _wait(terminal, payment, timeout, None, as_json, found)
    _show(payment, as_json, found)
    if not payment.is_final and not as_json:
        _stderr().print(f"Not final yet: check with `kessai-pos status {payment.trans_id}`.")
    _exit(_payment_exit(payment))


@app.command()
def qr(
    ctx: typer.Context,
    amount: Annotated[int, typer.Argument(help="The amount in yen.")],
    service: Annotated[str, typer.Option(help="The wallet's 2-digit serviceId (01 = PayPay).")],
    ttl: Annotated[
        int | None, typer.Option(help="Seconds the code stays valid (gateway default 300).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until paid, declined or expired.")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Show a QR code for the customer to scan (GET-QR-CODE) and wait until it is paid.

    With --json it prints JSON lines: the new payment (with qrData) at once, the final one last.
    """
    found: dict[str, Any] = {}
    with _guard(as_json, found), _terminal(ctx) as terminal:
        _start_up(terminal, as_json, found)
        payment = terminal.qr_code(amount, service, ttl_seconds=ttl)
        if as_json:
            _emit_json({**payment.to_dict(), **found})
        else:
            console = _stdout()
            if payment.qr_data:
                console.print(render.qr_text(payment.qr_data), end="", highlight=False)
                console.print(f"  {payment.qr_data}", highlight=False, soft_wrap=True)
            console.print(
                f"  {render.yen(payment.amount)} with {payment.service_name}   transId "
                f"{payment.trans_id}   valid until {render.local_time(payment.qr_expires_at)}",
                highlight=False,
            )
        if wait and not payment.is_final:
            timeout = None
            if payment.qr_expires_at is not None:
                left = (payment.qr_expires_at - datetime.now(UTC)).total_seconds()
                timeout = max(0.0, left) + QR_EXPIRY_MARGIN_S
            # What start-up recovery found went out with the first line already.
            payment = _wait(terminal, payment, timeout, payment.qr_expires_at, as_json, {})
    if as_json:
        if wait:
            _emit_json(payment.to_dict())
    else:
        render.print_payment(_stdout(), payment)
    _exit(_payment_exit(payment))


# -- after the sale ------------------------------------------------------------------------------


@app.command()
def refund(
    ctx: typer.Context,
    trans_id: Annotated[str, typer.Argument(metavar="TRANSID", help="The payment's transId.")],
    amount: Annotated[
        int | None, typer.Option(help="Yen to refund (default: all that remains).")
    ] = None,
    passcode: Annotated[
        str | None, typer.Option(help="The refund passCode (asked when not configured).")
    ] = None,
    refund_key: Annotated[
        str | None,
        typer.Option(help="Reuse this refundKey (to repeat a refund whose outcome was unknown)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Refund a payment, fully or partly (CANCEL), with the terminal's passCode.

    Refunds of this payment whose outcome was never learned are resolved first: while one of
    them went through (or may have), no new refund is sent.
    """
    found: dict[str, Any] = {}
    with _guard(as_json, found, "--refund-key"), _terminal(ctx) as terminal:
        earlier = _earlier_refund(terminal, trans_id, refund_key, as_json, found)
        found["refundSent"] = earlier is None
        if earlier is not None:
            key, payment = earlier
        else:
            code = passcode or terminal.config.pass_code
            if code is None:
                code = typer.prompt("Refund passCode", hide_input=True, err=True)
            key = refund_key or new_trans_key()  # known here, to report this refund's status
            payment = terminal.refund(trans_id, amount, pass_code=code, refund_key=key)
    found["refundKey"] = key
    _show(payment, as_json, found)
    mine = payment.refund_by_key(key)
    if earlier is not None and mine is not None and amount is not None and mine.amount != amount:
        # What went through was another amount than this command asks for, and this command
        # sent nothing: a script must not read that as its own refund done.
        if not as_json:
            _stderr().print(
                f"Nothing was refunded by this command: the earlier refund was "
                f"{render.yen(mine.amount)}, not {render.yen(amount)}.",
                highlight=False,
            )
        _exit(EXIT_ERROR)
    if mine is None or mine.status is RefundStatus.PENDING:
        if not as_json:
            _stderr().print(
                f"Refund {key} is not final yet: check with `kessai-pos recover`; run the same "
                f"command again with `--refund-key {key}`, never with a new key.",
                highlight=False,
            )
        _exit(EXIT_PENDING)
    _exit(EXIT_OK if mine.status is RefundStatus.SUCCEEDED else EXIT_DECLINED)


# A refund recovery found in one of these moved no money: another may be sent.
_NOTHING_REFUNDED: Final = frozenset({"FAILED", "NOT_SENT", "NOT_RECEIVED", "REJECTED"})


def _earlier_refund(
    terminal: Terminal,
    trans_id: str,
    refund_key: str | None,
    as_json: bool,
    found: dict[str, Any],
) -> tuple[str, Payment] | None:
    """Resolve this payment's refunds whose outcome is unknown, before sending another.

    Answers the earlier refund (its key, and the payment) when one of them went through, is
    pending or is still unknown: then no new refund is sent, so running a refund again after
    an unknown outcome never refunds twice. None when every one of them moved no money.
    """
    mid = terminal.config.mid
    unresolved = {
        r.refund_key
        for r in terminal.journal.refunds(trans_id=trans_id, unresolved=True, mid=mid)
        if r.refund_key != refund_key  # the same key again is the same refund: safe to send
    }
    if not unresolved:
        return None
    report = terminal.recover()
    found["recovered"] = report.to_dict()
    if not as_json:
        render.print_recovery(_stderr(), report)
    moved = [
        r
        for r in report.refunds
        if r.refund_key in unresolved and (not r.resolved or r.after not in _NOTHING_REFUNDED)
    ]
    if not moved:
        return None
    first = next((r for r in moved if not r.resolved), moved[0])
    if not as_json:
        what = "went through" if first.resolved else "is still not known"
        _stderr().print(
            f"An earlier refund of this payment, {first.refund_key} "
            f"({render.yen(first.amount)}), {what}: no new refund was sent. "
            + (
                "Run the command again to refund more."
                if first.resolved
                else f"Retry it with `--refund-key {first.refund_key}`, or run `kessai-pos "
                "recover` later."
            ),
            highlight=False,
        )
    return first.refund_key, terminal.paycheck(trans_id)


@app.command()
def status(
    ctx: typer.Context,
    which: Annotated[
        str, typer.Argument(metavar="TRANSKEY|TRANSID", help="A transKey, or a 10-digit transId.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Ask the gateway where a payment stands (STATUS by transKey, PAYCHECK by transId)."""
    with _guard(as_json), _terminal(ctx) as terminal:
        payment: Payment
        if which.isdigit() and len(which) == 10:
            try:
                payment = terminal.paycheck(which)
            except PaymentNotFound:
                payment = terminal.status(which)  # a transKey may be 10 digits too
        else:
            payment = terminal.status(which)
    _show(payment, as_json)
    _exit(_payment_exit(payment))


@app.command()
def voucher(
    ctx: typer.Context,
    trans_id: Annotated[str, typer.Argument(metavar="TRANSID", help="The payment's transId.")],
    number: Annotated[str, typer.Argument(metavar="NO", help="The shop's slip number.")],
    as_json: JsonOpt = False,
) -> None:
    """Attach the shop's voucher (slip) number to a payment (VOUCHERNO)."""
    with _guard(as_json), _terminal(ctx) as terminal:
        payment = terminal.voucher(trans_id, number)
    _show(payment, as_json)


@app.command()
def identify(
    ctx: typer.Context,
    code: Annotated[str, typer.Argument(help="The scanned code.")],
    as_json: JsonOpt = False,
) -> None:
    """Tell which wallet a scanned code belongs to (IDENTIFY-SCANNED-QR-CODE)."""
    with _guard(as_json), _terminal(ctx) as terminal:
        found = terminal.identify(code)
    if as_json:
        _emit_json(found.to_dict())
    else:
        _stdout().print(
            f"{found.service_name} ({found.service_name_en}), serviceId {found.service_id}"
        )


# -- the journal ---------------------------------------------------------------------------------


def _journal_path(ctx: typer.Context) -> Path:
    """The journal's path without needing the rest of the settings."""
    explicit = os.environ.get(ENV_PREFIX + "JOURNAL")
    if explicit:
        return Path(explicit).expanduser()
    path = _options(ctx).config_file or default_config_path()
    if path.exists():
        configured = read_config_file(path).get("journal_path")
        if configured:
            return Path(str(configured)).expanduser()
    return default_journal_path()


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    if value.endswith(("d", "h")) and value[:-1].isdigit():
        unit = {"d": "days", "h": "hours"}[value[-1]]
        return datetime.now(UTC) - timedelta(**{unit: int(value[:-1])})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter("use a date (2026-01-31), a time, or 12h / 7d") from exc
    return parsed if parsed.tzinfo else parsed.astimezone()


@app.command("journal")
def journal_command(
    ctx: typer.Context,
    status_filter: Annotated[
        str | None, typer.Option("--status", help="Only this status (COMPLETED, SENT, …).")
    ] = None,
    unresolved: Annotated[
        bool, typer.Option(help="Only entries whose outcome is not known yet.")
    ] = False,
    kind: Annotated[str | None, typer.Option(help="Only 'code' or 'qr' payments.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only since this date/time, or the last 12h / 7d.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=10_000)] = 50,
    as_json: JsonOpt = False,
) -> None:
    """List the payments and refunds this register journaled (local, no network)."""
    kinds = {"code": PaymentKind.CUSTOMER_CODE, "qr": PaymentKind.MERCHANT_QR}
    if kind is not None and kind not in kinds:
        raise typer.BadParameter("kind must be 'code' or 'qr'", param_hint="--kind")
    with _guard(as_json):
        with Journal(_journal_path(ctx)) as journal:
            entries = journal.entries(
                status=status_filter,
                unresolved=unresolved,
                kind=kinds[kind] if kind else None,
                since=_since(since),
                limit=limit,
            )
            refunds = journal.refunds(unresolved=unresolved, limit=limit)
        if status_filter is not None:
            refunds = [r for r in refunds if r.status == status_filter.upper()]
    if as_json:
        _emit_json(
            {"payments": [e.to_dict() for e in entries], "refunds": [r.to_dict() for r in refunds]}
        )
        return
    console = _stdout()
    if not entries and not refunds:
        console.print("The journal has no matching entries.")
        return
    console.print(render.journal_table(entries))
    if refunds:
        console.print(render.refunds_table(refunds))


@app.command()
def recover(
    ctx: typer.Context,
    wait: Annotated[
        float, typer.Option(help="Seconds to keep polling payments that are still pending.")
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Resolve every journaled payment or refund whose outcome this register never learned."""
    with _guard(as_json), _terminal(ctx) as terminal:
        report = terminal.recover(wait_s=wait)
    if as_json:
        _emit_json(report.to_dict())
    else:
        render.print_recovery(_stdout(), report)
    _exit(EXIT_OK if report.all_resolved else EXIT_PENDING)


def _run(entry: Callable[[], Any]) -> None:
    try:
        entry()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except ConfigurationError as exc:  # raised outside a command's guard (config loading)
        _stderr().print(f"[red]error[/red] {exc.message}")
        sys.exit(EXIT_ERROR)


def main() -> None:
    """Entry point of the `kessai-pos` command."""
    _run(app)
