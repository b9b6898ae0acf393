"""The console's pages under /console: login, payments, one payment, refunds, terminals, totals.

Handlers are thin: read the form or the query, run one unit of work (or one gateway call), render.
Login, CSRF and roles are enforced by ``web.gate`` before any handler runs; routes say only
whether they are ``public`` or ``owner_only``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

from litestar import Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect
from sqlalchemy.engine import Connection

from kessai.adapters.repository import StaleWrite
from kessai.api.errors import request_id_of
from kessai.console import actions, queries, users, views
from kessai.console.charts import daily_chart
from kessai.console.formats import jst_today, yen
from kessai.console.i18n import LANGS, Translator
from kessai.console.render import service_name
from kessai.console.web import (
    HOME,
    AnyRequest,
    config_of,
    cookie,
    error_page,
    expired_cookie,
    gateway,
    kessai_error_message,
    lang_cookie,
    lang_of,
    login_csrf_cookie_name,
    page,
    read,
    require_user,
    safe_next,
    session_cookie_name,
    user_of,
    write,
)
from kessai.domain import fields
from kessai.domain.catalog import load_catalog
from kessai.domain.errors import InvalidRequest, KessaiError, NotFound, RateLimited
from kessai.domain.model import MAX_AMOUNT_YEN, MIN_AMOUNT_YEN, VOUCHER_EDITABLE_STATUSES
from kessai.security import csrf_token_of, new_session_token, token_hash, verify_secret
from kessai.service import admin, ratelimit

PUBLIC: Final = {"public": True}
OWNER: Final = {"owner_only": True}
# Compared against when the email is unknown, so that the answer takes as long as for a wrong
# password (no way to learn which addresses have accounts).
_DUMMY_HASH: Final = (
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$"
    "2Fqkh8Wj3UsxDM3Tuf6IfYQ7EmVN1ZhFqWv7Y3r6sCk"
)
TOTALS_DEFAULT_DAYS: Final = 14
REFUND_KEY_PREFIX: Final = "C"
MAX_AMOUNT_TEXT: Final = 12
# A typed amount of yen: ASCII digits, either plain or grouped by threes with commas, after an
# optional ¥. Nothing else: no sign, no "_" and no full-width digits, all of which int() accepts.
_YEN_TEXT: Final = re.compile(r"¥?([0-9]+|[0-9]{1,3}(?:,[0-9]{3})+)")


def _form_text(form: Any, name: str, limit: int = 200) -> str | None:
    """A form field, trimmed; "" when absent, None when longer than ``limit``.

    A value that is too long is refused, never cut short: cut short it may read as another valid
    value (an amount of 000000000001999 as 000000000001). Each caller decides what refusing means.
    """
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    value = value.strip()
    return value if len(value) <= limit else None


def _yen_amount(raw: str | None) -> int:
    """A typed amount of whole yen within the gateway's bounds; ValueError for anything else.

    ``raw`` is None when the field was too long: refused like any other unreadable amount.
    """
    found = _YEN_TEXT.fullmatch(raw or "")
    if found is None:
        raise ValueError("amount is not a whole number of yen")
    value = int(found[1].replace(",", ""))
    if not MIN_AMOUNT_YEN <= value <= MAX_AMOUNT_YEN:
        raise ValueError("amount out of bounds")
    return value


def _services(lang: str) -> list[tuple[str, str]]:
    return [(s.service_id, service_name(s.service_id, lang)) for s in load_catalog()]


# -- login and language ---------------------------------------------------------------------------


@get("/", opt=PUBLIC)
async def console_home() -> Redirect:
    """The console's front door: the payment list (or the login page, via the gate)."""
    return Redirect(HOME, status_code=303)


@get("/login", opt=PUBLIC)
async def login_page(request: AnyRequest) -> Response[Any]:
    """The login form."""
    if user_of(request) is not None:
        return Redirect(safe_next(request.query_params.get("next")), status_code=303)
    t = Translator(lang_of(request))
    params = request.query_params
    notice = t("login.logged_out") if params.get("bye") else None
    info = t("login.required") if params.get("next") and not notice else None
    return page(
        request,
        "login.html",
        next=safe_next(params.get("next")),
        email="",
        notice=notice,
        info=info,
        insecure_transport=_secure_cookie_over_http(request),
    )


def _secure_cookie_over_http(request: AnyRequest) -> bool:
    """Whether the browser will drop our Secure session cookie (plain http, Secure configured).

    Worth saying on the login page: otherwise logging in just shows the form again.
    """
    return config_of(request).cookie_secure and request.url.scheme == "http"


@post("/login", opt=PUBLIC, status_code=200)
async def login_submit(request: AnyRequest) -> Response[Any]:
    """Check the password (argon2, off the event loop), count failures, open a session.

    Failed logins also count against the client address, together with the terminal API's
    LOGIN (service/ratelimit.py).
    """
    config = config_of(request)
    form = await request.form()
    # An address longer than any account's is refused like an unknown one: "" names no account.
    email = _form_text(form, "email", users.MAX_EMAIL_LENGTH) or ""
    password = form.get("password")
    password = password if isinstance(password, str) else ""
    target = safe_next(_form_text(form, "next", 2000))  # too long (None): home, as unsafe ones
    gw = gateway(request)
    now = gw.clock()
    t = Translator(lang_of(request))

    def refused(key: str, status_code: int, **values: object) -> Response[str]:
        return page(
            request,
            "login.html",
            status_code=status_code,
            next=target,
            email=email,
            error=t(key, **values),
            insecure_transport=_secure_cookie_over_http(request),
        )

    try:
        async with ratelimit.login_attempt(gw.db, gw.settings, request.scope, now) as attempt:
            subject = await read(request, lambda conn: users.read_login_subject(conn, email, now))
            if subject.locked_seconds:
                return refused("login.locked", 429, minutes=-(-subject.locked_seconds // 60))
            ok = await asyncio.to_thread(
                verify_secret,
                subject.password_hash or _DUMMY_HASH,
                password[: users.MAX_PASSWORD_LENGTH],
            )
            if subject.user_id is None:
                attempt.fail()
                return refused("login.wrong", 401)
            token = new_session_token()
            user_id = subject.user_id
            rid = request_id_of(request.scope)
            outcome = await write(
                request,
                lambda conn: users.finish_login(
                    conn,
                    user_id=user_id,
                    password_ok=ok,
                    token_digest=token_hash(token),
                    # Only a digest: the token itself is derived from the session's whenever a
                    # page needs it (``csrf_token_of``).
                    csrf_digest=token_hash(csrf_token_of(token)),
                    now=now,
                    config=config,
                    request_id=rid,
                ),
            )
            if outcome.refused == "locked":
                if not ok:
                    # The guess that locked the account is a failed login all the same.
                    attempt.fail()
                return refused("login.locked", 429, minutes=-(-outcome.locked_seconds // 60))
            if outcome.refused == "disabled":
                return refused("login.disabled", 403)
            if outcome.refused is not None:
                attempt.fail()
                return refused("login.wrong", 401)
    except RateLimited as exc:
        wait = exc.retry_after_seconds or 60
        return refused("login.throttled", 429, minutes=-(-wait // 60))
    cookies = [cookie(config, session_cookie_name(config), token, config.session_max_seconds)]
    if outcome.lang:
        cookies.append(lang_cookie(config, outcome.lang))
    return Redirect(target, status_code=303, cookies=cookies)


@post("/logout", status_code=303)
async def logout(request: AnyRequest) -> Redirect:
    """End the session and forget its cookie."""
    config = config_of(request)
    user = require_user(request)
    now = gateway(request).clock()
    rid = request_id_of(request.scope)
    await write(request, lambda conn: users.end_session(conn, user, now, rid))
    return Redirect(
        "/console/login?bye=1",
        status_code=303,
        cookies=[
            expired_cookie(config, session_cookie_name(config)),
            expired_cookie(config, login_csrf_cookie_name(config)),
        ],
    )


@post("/lang", opt=PUBLIC, status_code=303)
async def switch_language(request: AnyRequest) -> Redirect:
    """Switch between Japanese and English; remembered in a cookie and on the user."""
    config = config_of(request)
    form = await request.form()
    chosen = _form_text(form, "lang", 2)
    # An unknown choice, or one too long to be any (None): Japanese.
    lang = chosen if chosen is not None and chosen in LANGS else "ja"
    user = user_of(request)
    if user is not None:
        await write(request, lambda conn: users.remember_lang(conn, user.user_id, lang))
    return Redirect(
        safe_next(_form_text(form, "next", 2000)),
        status_code=303,
        cookies=[lang_cookie(config, lang)],
    )


# -- payments -------------------------------------------------------------------------------------


def _filter(request: AnyRequest) -> queries.PaymentFilter:
    service_ids = frozenset(s.service_id for s in load_catalog())
    return queries.parse_filter(request.query_params, service_ids)


@get("/payments")
async def payments_page(request: AnyRequest) -> Response[str]:
    """The payment list: filters, newest first, pages of ``page_size``."""
    user = require_user(request)
    config = config_of(request)
    f = _filter(request)

    def unit(conn: Connection) -> tuple[queries.PaymentPage, list[queries.TerminalOption]]:
        return (
            queries.list_payments(conn, user.merchant_id, f, config.page_size),
            queries.terminal_options(conn, user.merchant_id),
        )

    result, terminals = await read(request, unit)
    lang = lang_of(request)
    return page(
        request,
        "payments.html",
        section="payments",
        f=f,
        result=result,
        terminals=terminals,
        services=_services(lang),
        statuses=queries.STATUSES,
    )


@get("/payments.csv")
async def payments_csv(request: AnyRequest) -> Response[bytes]:
    """The filtered list as a CSV file (UTF-8 with BOM, for Excel)."""
    user = require_user(request)
    config = config_of(request)
    f = _filter(request)
    rows = await read(
        request,
        lambda conn: queries.export_payments(conn, user.merchant_id, f, config.csv_max_rows),
    )
    lang = lang_of(request)
    body = views.payments_csv(Translator(lang), lang, rows)
    stamp = gateway(request).clock().strftime("%Y%m%d-%H%M%S")
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="kessai-payments-{stamp}.csv"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _detail(request: AnyRequest, trans_id: str) -> queries.PaymentDetail:
    user = require_user(request)
    missing = NotFound(f"no payment with transId {trans_id}", field="transId")
    try:
        fields.check("transId", trans_id)
    except InvalidRequest as exc:
        raise missing from exc  # a malformed number names no payment: "not found"
    detail = await read(
        request, lambda conn: queries.payment_detail(conn, user.merchant_id, trans_id)
    )
    if detail is None:
        raise missing
    return detail


def _detail_page(
    request: AnyRequest,
    detail: queries.PaymentDetail,
    *,
    status_code: int = 200,
    notice: str | None = None,
    refund_error: str | None = None,
    refund_mode: str = "full",
    refund_amount: str = "",
    voucher_error: str | None = None,
    voucher_value: str | None = None,
) -> Response[str]:
    lang = lang_of(request)
    t = Translator(lang)
    payment = detail.stored.payment
    return page(
        request,
        "payment.html",
        status_code=status_code,
        section="payments",
        d=detail,
        p=payment,
        timeline=views.timeline(t, lang, detail.timeline),
        actor_label=lambda actor: views.actor_label(t, actor),
        voucher_editable=payment.status in VOUCHER_EDITABLE_STATUSES,
        voucher_value=voucher_value if voucher_value is not None else (payment.voucher_no or ""),
        voucher_error=voucher_error,
        refund_error=refund_error,
        refund_mode=refund_mode,
        refund_amount=refund_amount,
        notice=notice,
    )


@get("/payments/{trans_id:str}")
async def payment_page(request: AnyRequest, trans_id: FromPath[str]) -> Response[str]:
    """One payment: summary, voucher number, refunds, and its history."""
    detail = await _detail(request, trans_id)
    t = Translator(lang_of(request))
    params = request.query_params
    notice = None
    if params.get("done") == "voucher":
        notice = t("payment.voucher_saved")
    elif params.get("done") == "refund":
        refund = next((r for r in detail.refunds if r.refund_id == params.get("refund")), None)
        if refund is not None:
            key = {"SUCCEEDED": "refund.done", "FAILED": "refund.failed"}.get(
                refund.status, "refund.pending"
            )
            notice = t(key, amount=yen(refund.amount), refund_id=refund.refund_id)
    return _detail_page(request, detail, notice=notice)


def _refund_amount(form: Any, refundable: int) -> int:
    """The amount of the refund form: all that remains, or the partial amount typed.

    Any mode but "partial" (a too long one too) asks for all that remains, which the confirmation
    page shows before anything is refunded.
    """
    if _form_text(form, "mode", 10) != "partial":
        return refundable
    value = _yen_amount(_form_text(form, "amount", MAX_AMOUNT_TEXT))
    if value > refundable:
        raise ValueError("amount out of range")
    return value


@post("/payments/{trans_id:str}/refund/confirm", opt=OWNER, status_code=200)
async def refund_confirm(request: AnyRequest, trans_id: FromPath[str]) -> Response[str]:
    """The confirmation step: the refund to be made, with a fresh key for the final step."""
    detail = await _detail(request, trans_id)
    payment = detail.stored.payment
    form = await request.form()
    t = Translator(lang_of(request))
    refundable = payment.refundable_amount
    if refundable <= 0:
        return _detail_page(
            request, detail, status_code=409, refund_error=t("err.PAYMENT_NOT_REFUNDABLE")
        )
    try:
        amount = _refund_amount(form, refundable)
    except ValueError:
        return _detail_page(
            request,
            detail,
            status_code=400,
            refund_error=t("refund.amount_invalid", max=yen(refundable)),
            refund_mode="partial",
            refund_amount=_form_text(form, "amount", MAX_AMOUNT_TEXT) or "",
        )
    return page(
        request,
        "refund_confirm.html",
        section="payments",
        p=payment,
        amount=amount,
        # Generated here, sent back by the final step: pressing the button twice, or reloading
        # after a lost answer, replays the same refund instead of making a second one.
        refund_key=REFUND_KEY_PREFIX + secrets.token_hex(16),
    )


@post("/payments/{trans_id:str}/refund", opt=OWNER, status_code=303)
async def refund_submit(request: AnyRequest, trans_id: FromPath[str]) -> Response[Any]:
    """Make the refund through the gateway (CANCEL's rules and idempotency), then show it."""
    user = require_user(request)
    fields.check("transId", trans_id)
    form = await request.form()
    t = Translator(lang_of(request))
    key_text = _form_text(form, "refund_key", 40)
    try:
        # A key too long to be one (None) is refused by refundKey's rule, as a malformed one is.
        refund_key = fields.check("refundKey", key_text or "")
        amount = _yen_amount(_form_text(form, "amount", MAX_AMOUNT_TEXT))
        view = await gateway(request).refund_for_merchant(
            user.merchant_id,
            trans_id,
            amount=amount,
            refund_key=refund_key,
            actor=user.actor,
            request_id=request_id_of(request.scope),
        )
    except (KessaiError, ValueError) as exc:
        detail = await _detail(request, trans_id)
        if isinstance(exc, KessaiError):
            message, status_code = kessai_error_message(t, exc), exc.http_status
        else:
            message, status_code = t("refund.amount_invalid", max=yen(1)), 400
        return _detail_page(request, detail, status_code=status_code, refund_error=message)
    refund = next(r for r in view.payment.refunds if r.refund_key == refund_key)
    return Redirect(
        f"/console/payments/{trans_id}?done=refund&refund={refund.refund_id}", status_code=303
    )


@post("/payments/{trans_id:str}/voucher", opt=OWNER, status_code=303)
async def voucher_submit(request: AnyRequest, trans_id: FromPath[str]) -> Response[Any]:
    """Attach or replace the voucher number (VOUCHERNO's rules)."""
    user = require_user(request)
    fields.check("transId", trans_id)
    form = await request.form()
    # A number too long to be one (None) becomes "", which VOUCHERNO's rule refuses like a
    # malformed one (the page says so; the payment keeps its number).
    voucher_no = _form_text(form, "voucher_no", 40) or ""
    now = gateway(request).clock()
    rid = request_id_of(request.scope)
    t = Translator(lang_of(request))

    def unit(conn: Connection) -> None:
        actions.set_voucher(conn, user, trans_id, voucher_no, now, rid)

    try:
        try:
            await write(request, unit)
        except StaleWrite:
            await write(request, unit)  # a terminal changed the payment meanwhile: once more
    except KessaiError as exc:
        detail = await _detail(request, trans_id)
        message = (
            t("payment.voucher_invalid")
            if isinstance(exc, InvalidRequest)
            else kessai_error_message(t, exc)
        )
        return _detail_page(
            request,
            detail,
            status_code=exc.http_status,
            voucher_error=message,
            voucher_value=voucher_no,
        )
    return Redirect(f"/console/payments/{trans_id}?done=voucher", status_code=303)


# -- terminals ------------------------------------------------------------------------------------


@get("/terminals")
async def terminals_page(request: AnyRequest) -> Response[str]:
    """The merchant's terminals: enabled, logged in (from which key), last seen, locks."""
    user = require_user(request)
    now = gateway(request).clock()
    rows = await read(request, lambda conn: admin.list_terminals(conn, now, user.merchant_id))
    t = Translator(lang_of(request))
    params = request.query_params
    notice = None
    done, mid = params.get("done"), params.get("mid")
    if done in actions.TERMINAL_ACTIONS and mid and mid.isdigit() and len(mid) == 16:
        key = "terminals.done.logout_none" if params.get("none") else f"terminals.done.{done}"
        notice = t(key, mid=mid)
    return page(
        request,
        "terminals.html",
        section="terminals",
        terminals=views.terminal_lines(rows),
        notice=notice,
    )


@post("/terminals/{mid:str}/{action:str}", opt=OWNER, status_code=303)
async def terminal_submit(
    request: AnyRequest, mid: FromPath[str], action: FromPath[str]
) -> Response[Any]:
    """Force logout, reset the password (shown once), unlock, disable or enable a terminal."""
    user = require_user(request)
    if action not in actions.TERMINAL_ACTIONS:
        return error_page(request, 404, "error.not_found_title", "error.not_found")
    now = gateway(request).clock()
    rid = request_id_of(request.scope)
    result = await write(
        request, lambda conn: actions.terminal_action(conn, user, mid, action, now, rid)
    )
    if result.password is not None:
        return page(
            request,
            "terminal_password.html",
            section="terminals",
            mid=mid,
            password=result.password,
        )
    none = "&none=1" if result.session_ended is False else ""
    return Redirect(f"/console/terminals?done={action}&mid={mid}{none}", status_code=303)


# -- daily totals ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Range:
    day_from: date
    day_to: date
    invalid: bool


def _totals_range(request: AnyRequest, max_days: int) -> _Range:
    today = jst_today(gateway(request).clock())
    default = _Range(today - timedelta(days=TOTALS_DEFAULT_DAYS - 1), today, False)
    params = request.query_params
    raw_from, raw_to = params.get("from"), params.get("to")
    if not raw_from and not raw_to:
        return default
    try:
        # A day at the very end of the calendar is refused like an unreadable one (see
        # queries.FIRST_DAY for why), and so is a default start that would fall before it.
        day_to = queries.parse_day(raw_to) if raw_to else today
        day_from = (
            queries.parse_day(raw_from)
            if raw_from
            else day_to - timedelta(days=TOTALS_DEFAULT_DAYS - 1)
        )
    except (ValueError, OverflowError):  # OverflowError: that default start before year 1
        return _Range(default.day_from, default.day_to, True)
    if day_from < queries.FIRST_DAY or day_from > day_to or (day_to - day_from).days >= max_days:
        return _Range(default.day_from, default.day_to, True)
    return _Range(day_from, day_to, False)


@get("/totals")
async def totals_page(request: AnyRequest) -> Response[str]:
    """Daily totals per day, terminal and service, with a chart."""
    user = require_user(request)
    config = config_of(request)
    span = _totals_range(request, config.totals_max_days)
    params = request.query_params
    mid = params.get("terminal") or None
    service_id = params.get("service") or None
    try:
        if mid is not None:
            fields.check("mid", mid)
        if service_id is not None:
            load_catalog().require(service_id)
    except InvalidRequest:
        mid = service_id = None

    def unit(conn: Connection) -> tuple[queries.Totals, list[queries.TerminalOption]]:
        return (
            queries.daily_totals(
                conn,
                user.merchant_id,
                span.day_from,
                span.day_to,
                mid=mid,
                service_id=service_id,
            ),
            queries.terminal_options(conn, user.merchant_id),
        )

    totals, terminals = await read(request, unit)
    lang = lang_of(request)
    t = Translator(lang)
    chart = daily_chart(
        totals.by_day,
        {"paid": t("totals.paid"), "refunded": t("totals.refunded"), "net": t("totals.net")},
    )
    return page(
        request,
        "totals.html",
        section="totals",
        totals=totals,
        chart=chart,
        terminals=terminals,
        services=_services(lang),
        mid=mid,
        service_id=service_id,
        invalid=span.invalid,
        max_days=config.totals_max_days,
    )


ROUTES: Final = [
    console_home,
    login_page,
    login_submit,
    logout,
    switch_language,
    payments_page,
    payments_csv,
    payment_page,
    refund_confirm,
    refund_submit,
    voucher_submit,
    terminals_page,
    terminal_submit,
    totals_page,
]
