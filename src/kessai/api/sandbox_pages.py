"""Sandbox-only routes: the page behind a sandbox qrData URL, and code issuing over HTTP."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from kessai.api.terminal import gateway_of
from kessai.connectors.sandbox import wallets
from kessai.domain.errors import NotFound

TAG = "Sandbox (test mode only)"


class CodesBody(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """Ask the sandbox wallets for fresh one-time customer codes."""

    service_id: str
    outcome: str = "success"
    count: int = 1


class CodesAnswer(msgspec.Struct):
    """Fresh customer codes; each pays once with the requested outcome."""

    codes: list[str]


class DecisionForm(msgspec.Struct):
    """The simulator page's form."""

    decision: str
    password: str = ""


@post(
    "/sandbox/codes",
    tags=[TAG],
    operation_id="sandboxIssueCodes",
    status_code=200,
    summary="Issue sandbox customer codes",
)
async def issue_codes(state: State, data: CodesBody) -> CodesAnswer:
    """Issue one-time customer codes whose payment ends with ``outcome``."""
    gateway = gateway_of(state)
    now = gateway.clock()
    codes = await gateway.db.run(
        lambda conn: wallets.issue_codes(conn, data.service_id, data.outcome, data.count, now)
    )
    return CodesAnswer(codes)


@get("/sandbox/pay/{token:str}", include_in_schema=False)
async def pay_page(state: State, request: Request[Any, Any, Any], token: str) -> Template:
    """The customer's side of a sandbox QR code: approve, decline, or confirm with a password."""
    gateway = gateway_of(state)
    charge = await gateway.db.run(lambda conn: wallets.charge_by_token(conn, token), write=False)
    if charge is None:
        raise NotFound("no such sandbox payment page", code="NOT_FOUND")
    now = gateway.clock()
    seconds_left = (
        max(0, int((charge.expires_at - now).total_seconds())) if charge.expires_at else None
    )
    return Template(
        template_name="sandbox_pay.html",
        context={
            "charge": charge,
            "token": token,
            "seconds_left": seconds_left,
            "step": request.query_params.get("step", ""),
        },
    )


@post("/sandbox/pay/{token:str}", include_in_schema=False, status_code=303)
async def pay_decide(
    state: State,
    token: str,
    data: DecisionForm = Body(media_type=RequestEncodingType.URL_ENCODED),  # noqa: B008
) -> Redirect:
    """Record the simulated customer's decision."""
    gateway = gateway_of(state)
    charge = await gateway.db.run(lambda conn: wallets.charge_by_token(conn, token), write=False)
    if charge is None:
        raise NotFound("no such sandbox payment page", code="NOT_FOUND")
    if data.decision == "password":
        return Redirect(f"/sandbox/pay/{token}?step=password", status_code=303)
    approve = data.decision == "approve"
    now = gateway.clock()
    await gateway.db.run(lambda conn: wallets.settle(conn, charge.ref, approve, now))
    return Redirect(f"/sandbox/pay/{token}", status_code=303)


ROUTES = [issue_codes, pay_page, pay_decide]
