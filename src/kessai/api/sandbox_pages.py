"""Sandbox-only routes: code issuing over HTTP, and the wallet simulator (the customer's side).

- ``POST /sandbox/codes``: fresh one-time customer codes, as JSON (for tests and scripts).
- ``/sandbox/pay/{token}``: the page behind a sandbox qrData URL. The customer sees the merchant,
  the amount and the time left, and approves, declines, or chooses to enter a password — which
  leaves the payment waiting (PENDING) until confirmed, as a real wallet does.
- ``/sandbox/phone``: the customer's phone showing a one-time payment code as a Code 128 barcode
  and a QR code that refreshes, for a developer to scan or to copy into ``kessai-pos pay``; once
  the code is used, the phone shows the result or asks for the password.

These pages take no CSRF token: they stand for the customer's wallet app, the sandbox moves no
money, and the unguessable token in a qrData URL (or the one-time code itself) is what entitles
a browser to decide a payment — the same proof a real wallet's customer holds.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Final

import msgspec
import segno
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, JSONBody, PathParameter
from litestar.response import Redirect
from msgspec import Meta

from kessai.api.terminal import gateway_of, strict
from kessai.api.wire import ErrorBody, described, formatted
from kessai.api.wire import JSONBody as StrictJSONBody
from kessai.connectors.sandbox import wallets
from kessai.console import barcode, simulator
from kessai.console.config import ConsoleConfig
from kessai.console.i18n import LANGS, normalise_lang
from kessai.console.render import html
from kessai.console.web import LANG_COOKIE, lang_cookie
from kessai.domain.catalog import load_catalog
from kessai.domain.errors import ERROR_CODES, InvalidRequest, NotFound

TAG = "Sandbox (test mode only)"
DECISIONS: Final = ("approve", "decline", "password")
# A real wallet shows a new payment code every minute or so; so does the simulated phone.
PHONE_CODE_REFRESH_SECONDS: Final = 60
MAX_PASSWORD_LENGTH: Final = 64

AnyRequest = Request[Any, Any, Any]


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers (the one envelope), listing their codes."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            generate_examples=False,
            description="Error: "
            + ", ".join(code for code, (s, _) in ERROR_CODES.items() if s == status),
        )
        for status in (*statuses, 500)
    }


class CodesBody(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Ask the sandbox wallets for fresh one-time customer codes."""

    service_id: Annotated[str, Meta(extra_json_schema=formatted("serviceId"))]
    outcome: Annotated[str, Meta(extra_json_schema=described(enum=list(wallets.OUTCOMES)))] = (
        "success"
    )
    count: Annotated[
        int, Meta(extra_json_schema=described(minimum=1, maximum=wallets.MAX_CODES_PER_CALL))
    ] = 1


class CodesAnswer(msgspec.Struct):
    """Fresh customer codes; each pays once with the requested outcome."""

    codes: list[str]


class CodeStatusBody(msgspec.Struct, forbid_unknown_fields=True):
    """The simulated phone asks what became of its code."""

    code: str


class CodeStatusAnswer(msgspec.Struct):
    """``unused``, ``unknown``, or the sandbox charge's status (WAITING, SUCCEEDED, …)."""

    state: str


@post(
    "/sandbox/codes",
    tags=[TAG],
    operation_id="sandboxIssueCodes",
    status_code=200,
    summary="Issue sandbox customer codes",
    responses=_errors(400, 413, 415, 422),
)
async def issue_codes(
    state: State, request: AnyRequest, data: StrictJSONBody[CodesBody]
) -> CodesAnswer:
    """Issue one-time customer codes whose payment ends with ``outcome``."""
    # Decoded again without coercion, as the terminal API does: "5" is not a count.
    data = await strict(request, CodesBody)
    gateway = gateway_of(state)
    now = gateway.clock()
    codes = await gateway.db.run(
        lambda conn: wallets.issue_codes(conn, data.service_id, data.outcome, data.count, now)
    )
    return CodesAnswer(codes)


class SettleAnswer(msgspec.Struct, rename="camel"):
    """The sandbox charge's status after the simulated customer decided."""

    trans_id: str
    sandbox_status: str


@post(
    "/sandbox/charges/{transId:str}/{decision:str}",
    tags=[TAG],
    operation_id="sandboxSettle",
    status_code=200,
    summary="Approve or decline, as the customer, a payment that waits in the wallet app",
    responses=_errors(400, 404),
)
async def settle_charge(
    state: State,
    transId: FromPath[str],  # noqa: N803 - the guide's name, as in the terminal API
    decision: Annotated[str, PathParameter(schema_extra={"enum": ["approve", "decline"]})],
) -> SettleAnswer:
    """The HTTP twin of `kessai sandbox approve|decline TRANSID` (outcome "password")."""
    if decision not in ("approve", "decline"):
        raise InvalidRequest("decision must be approve or decline", field="decision")
    gateway = gateway_of(state)
    now = gateway.clock()
    status = await gateway.db.run(
        lambda conn: wallets.settle(conn, transId, decision == "approve", now)
    )
    return SettleAnswer(transId, status)


# -- language -------------------------------------------------------------------------------------


def _lang(request: AnyRequest) -> tuple[str, list[Any]]:
    """The page language; ``?lang=`` switches it and is remembered like the console's switch."""
    chosen = request.query_params.get("lang")
    if chosen in LANGS:
        config = ConsoleConfig.from_env(gateway_of(request.app.state).settings.public_url)
        return chosen, [lang_cookie(config, chosen)]
    return normalise_lang(request.cookies.get(LANG_COOKIE)), []


def _form_text(form: Any, name: str, limit: int) -> str:
    value = form.get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""


# -- the page behind qrData -----------------------------------------------------------------------


@get("/sandbox/pay/{token:str}", include_in_schema=False)
async def pay_page(state: State, request: AnyRequest, token: FromPath[str]) -> Response[str]:
    """The customer's side of a sandbox QR code: approve, decline, or confirm with a password."""
    gateway = gateway_of(state)
    charge = await gateway.db.run(lambda conn: wallets.charge_by_token(conn, token), write=False)
    if charge is None:
        raise NotFound("no such sandbox payment page", code="NOT_FOUND")
    now = gateway.clock()
    seconds_left = (
        max(0, int((charge.expires_at - now).total_seconds())) if charge.expires_at else None
    )
    is_open = charge.status == wallets.WAITING and (seconds_left is None or seconds_left > 0)
    # A code still WAITING after its deadline is expired for the customer, whatever the books
    # say until the gateway withdraws it.
    final = wallets.EXPIRED if charge.status == wallets.WAITING else charge.status
    lang, cookies = _lang(request)
    return html(
        "sandbox_pay.html",
        lang,
        cookies=cookies,
        charge=charge,
        token=token,
        seconds_left=seconds_left,
        step="password" if request.query_params.get("step") == "password" else "",
        error=bool(request.query_params.get("error")),
        open=is_open,
        final=final,
        here=f"/sandbox/pay/{token}",
    )


@post("/sandbox/pay/{token:str}", include_in_schema=False, status_code=303)
async def pay_decide(state: State, request: AnyRequest, token: FromPath[str]) -> Redirect:
    """Record the simulated customer's decision; the password step decides nothing yet."""
    gateway = gateway_of(state)
    form = await request.form()
    decision = _form_text(form, "decision", 20)
    if decision not in DECISIONS:
        raise InvalidRequest(f"decision must be one of {', '.join(DECISIONS)}", field="decision")
    charge = await gateway.db.run(lambda conn: wallets.charge_by_token(conn, token), write=False)
    if charge is None:
        raise NotFound("no such sandbox payment page", code="NOT_FOUND")
    if decision == "password":
        return Redirect(f"/sandbox/pay/{token}?step=password", status_code=303)
    password = _form_text(form, "password", MAX_PASSWORD_LENGTH)
    if decision == "approve" and _form_text(form, "step", 20) == "password" and not password:
        return Redirect(f"/sandbox/pay/{token}?step=password&error=empty", status_code=303)
    approve = decision == "approve"
    now = gateway.clock()
    await gateway.db.run(lambda conn: wallets.settle(conn, charge.ref, approve, now))
    return Redirect(f"/sandbox/pay/{token}", status_code=303)


# -- the customer's phone -------------------------------------------------------------------------


def _phone_services(lang: str) -> list[tuple[str, str]]:
    return [
        (s.service_id, s.name if lang == "ja" else s.name_en)
        for s in load_catalog()
        if s.active and s.supports_customer_code
    ]


def _phone_page(
    request: AnyRequest, mode: str, *, status_code: int = 200, **context: Any
) -> Response[str]:
    lang, cookies = _lang(request)
    context.setdefault("service_id", "01")
    context.setdefault("outcome", "success")
    return html(
        "sandbox/phone.html",
        lang,
        status_code=status_code,
        cookies=cookies,
        mode=mode,
        services=_phone_services(lang),
        outcomes=wallets.OUTCOMES,
        here="/sandbox/phone",
        **context,
    )


def _choice(form: Any, lang_services: list[tuple[str, str]]) -> tuple[str, str]:
    service_id = _form_text(form, "serviceId", 2)
    outcome = _form_text(form, "outcome", 20)
    if service_id not in {sid for sid, _ in lang_services}:
        raise InvalidRequest(
            "serviceId must be a service that takes customer codes", field="serviceId"
        )
    if outcome not in wallets.OUTCOMES:
        raise InvalidRequest(
            f"outcome must be one of {', '.join(wallets.OUTCOMES)}", field="outcome"
        )
    return service_id, outcome


@get("/sandbox/phone", include_in_schema=False)
async def phone_page(request: AnyRequest) -> Response[str]:
    """The phone's first screen: choose a wallet and what paying with its code will do."""
    return _phone_page(request, "pick")


@post("/sandbox/phone", include_in_schema=False, status_code=200)
async def phone_code(state: State, request: AnyRequest) -> Response[str]:
    """Show a fresh one-time payment code as a barcode and a QR code."""
    gateway = gateway_of(state)
    form = await request.form()
    service_id, outcome = _choice(form, _phone_services("en"))
    now = gateway.clock()
    code = (
        await gateway.db.run(lambda conn: wallets.issue_codes(conn, service_id, outcome, 1, now))
    )[0]
    barcode_svg = barcode.svg(code, module_px=2, height_px=72)
    return _phone_page(
        request,
        "code",
        service_id=service_id,
        outcome=outcome,
        code=code,
        barcode_uri="data:image/svg+xml;base64," + base64.b64encode(barcode_svg.encode()).decode(),
        # A full QR code: segno.make would pick a Micro QR for short codes, which few
        # POS scanners read.
        qr_uri=segno.make_qr(code, error="m").svg_data_uri(scale=6, border=4),
        refresh_seconds=PHONE_CODE_REFRESH_SECONDS,
    )


@post("/sandbox/phone/status", include_in_schema=False, status_code=200)
async def phone_code_status(
    state: State, request: AnyRequest, data: JSONBody[CodeStatusBody]
) -> CodeStatusAnswer:
    """What became of the phone's code (the page polls this until the code is used)."""
    # Decoded again as the terminal API's bodies are: a repeated "code" is refused, not guessed.
    data = await strict(request, CodeStatusBody)
    gateway = gateway_of(state)
    found = await gateway.db.run(lambda conn: simulator.code_state(conn, data.code), write=False)
    return CodeStatusAnswer(found.state)


@post("/sandbox/phone/watch", include_in_schema=False, status_code=200)
async def phone_watch(state: State, request: AnyRequest) -> Response[str]:
    """The phone after its code was used: the result, or the password prompt."""
    gateway = gateway_of(state)
    form = await request.form()
    code = _form_text(form, "code", simulator.MAX_CODE_LENGTH)
    found = await gateway.db.run(lambda conn: simulator.code_state(conn, code), write=False)
    return _phone_page(
        request,
        "result",
        state=found,
        code=code,
        service_id=found.service_id or _form_text(form, "serviceId", 2) or "01",
        outcome=found.outcome or _form_text(form, "outcome", 20) or "success",
        error=False,
    )


@post("/sandbox/phone/decide", include_in_schema=False, status_code=200)
async def phone_decide(state: State, request: AnyRequest) -> Response[str]:
    """The customer confirms with the wallet password, or refuses, on the phone."""
    gateway = gateway_of(state)
    form = await request.form()
    code = _form_text(form, "code", simulator.MAX_CODE_LENGTH)
    decision = _form_text(form, "decision", 20)
    if decision not in ("approve", "decline"):
        raise InvalidRequest("decision must be approve or decline", field="decision")
    now = gateway.clock()
    empty = decision == "approve" and not _form_text(form, "password", MAX_PASSWORD_LENGTH)
    if empty:
        found = await gateway.db.run(lambda conn: simulator.code_state(conn, code), write=False)
    else:
        found = await gateway.db.run(
            lambda conn: simulator.decide_for_code(conn, code, decision == "approve", now)
        )
    return _phone_page(
        request,
        "result",
        status_code=400 if empty else 200,
        state=found,
        code=code,
        service_id=found.service_id or "01",
        outcome=found.outcome or "success",
        error=empty,
    )


ROUTES = [
    issue_codes,
    settle_charge,
    pay_page,
    pay_decide,
    phone_page,
    phone_code,
    phone_code_status,
    phone_watch,
    phone_decide,
]
