"""The nine operations of the terminal API under /v1, one handler per guide operation."""

from __future__ import annotations

import io
import json
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import parse_qsl

import msgspec
import segno
from litestar import Request, Response, get, post, put
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter, PathParameter, QueryParameter
from litestar.response import Response as RawResponse

from kessai.api.errors import request_id_of, strict_decode_error
from kessai.api.wire import (
    Empty,
    ErrorBody,
    IdentifyAnswer,
    IdentifyBody,
    JSONBody,
    LoginAnswer,
    LoginBody,
    PaymentOut,
    QrBody,
    RefundBody,
    RequestBody,
    VoucherBody,
    payment_wire,
)
from kessai.domain.errors import ERROR_CODES, InvalidRequest, NotFound, Unauthenticated
from kessai.domain.fields import json_schema_pattern
from kessai.domain.model import PaymentKind
from kessai.service.gateway import Gateway, PaymentView
from kessai.service.ratelimit import login_attempt

SECURITY: list[dict[str, list[str]]] = [{"sessionToken": []}]


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error answers a route can give, listing their codes."""
    return {
        status: ResponseSpec(
            data_container=ErrorBody,
            # Made-up examples would show error codes that do not exist.
            generate_examples=False,
            description="Error: "
            + ", ".join(code for code, (s, _) in ERROR_CODES.items() if s == status),
        )
        for status in (400, *statuses, 500)
    }


AUTHED = (401, 403, 404, 413, 429)
TAG = "Terminal API"


def gateway_of(state: State) -> Gateway:
    """The gateway the app was built with."""
    gateway = state.gateway
    assert isinstance(gateway, Gateway)
    return gateway


def bearer_token(header: bytes | str | None) -> str | None:
    """The session token of an ``Authorization: Bearer …`` header value, or None."""
    if header is None:
        return None
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    scheme, _, token = text.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 200:
        return None
    return token


def bearer(request: Request[Any, Any, Any]) -> str:
    """The session token of ``Authorization: Bearer …``; SESSION_REQUIRED when there is none."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise Unauthenticated(
            "send the sessionToken from LOGIN as `Authorization: Bearer <sessionToken>`",
            code="SESSION_REQUIRED",
        )
    return token


B = TypeVar("B", bound=msgspec.Struct)


class _RepeatedKey(Exception):
    """Raised while a body is parsed again: one of its objects has ``key`` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> None:
    """``object_pairs_hook``: every object's pairs, in order, with their keys unescaped."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)


_PAIRS: Final = json.JSONDecoder(object_pairs_hook=_refuse_repeats)
# Per body type: how many fields are required, and the (name, default) of the optional ones.
_SHAPES: dict[type[msgspec.Struct], tuple[int, tuple[tuple[str, Any], ...]]] = {}


def _keys_sent(data: msgspec.Struct) -> int:
    """How many distinct keys the object ``data`` was decoded from had, at least.

    A required field was sent; an optional one whose value is not its default was sent. (One
    sent with its default value is not counted: a lower bound is all ``repeated_key`` needs.)
    """
    shape = _SHAPES.get(type(data))
    if shape is None:
        fields = msgspec.structs.fields(type(data))
        optional = tuple(
            (f.name, f.default)
            for f in fields
            if not f.required and f.default is not msgspec.NODEFAULT
        )
        shape = _SHAPES[type(data)] = (sum(1 for f in fields if f.required), optional)
    sent, optional = shape
    for name, default in optional:  # a plain loop: this runs on every REQUEST
        if getattr(data, name) != default:
            sent += 1
    return sent


def repeated_key(body: bytes, decoded: msgspec.Struct) -> str | None:
    r"""The first key that an object of the JSON ``body`` repeats, or None.

    ``decoded`` is what msgspec made of ``body``. msgspec keeps the last value of a repeated key
    (it has no option to refuse them), so ``{"amount": 100, "amount": 5000}`` would be an
    amount of 5000 whatever the client meant.

    Exact, and cheap for the usual body: in a JSON text each name/value pair has one ':' outside
    strings, so the body's ':' bytes are at least its pairs, which are at least the distinct
    keys of its top object, which are at least ``_keys_sent(decoded)``. When the first and the
    last counts are equal, all are, and no object repeats a key. Otherwise (a ':' inside a
    string, an optional field sent with its default value, or a repeat) the body is parsed again
    by the standard library's decoder, which hands over each object's pairs with their keys
    unescaped: ``"\u0061mount"`` is caught as a second ``amount``. Raises ``ValueError`` if
    that decoder refuses a body msgspec accepted (none is known).
    """
    if body.count(b":") == _keys_sent(decoded):
        return None
    try:
        _PAIRS.decode(body.decode())
    except _RepeatedKey as repeat:
        return repeat.key
    return None


async def strict(request: Request[Any, Any, Any], body_type: type[B]) -> B:
    """Decode the body again, strictly: "5" is not 5 and 1.0 is not 1 for money and ids.

    The framework's own decoding (kept for the OpenAPI description and its early errors)
    coerces strings to numbers; a payment API must not. A body that repeats a key is refused
    (MALFORMED_JSON): which of its values was meant is anyone's guess.
    """
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        # A form or text body that happens to parse as JSON is still a client mistake.
        raise InvalidRequest(
            f"send the body as application/json, not {media or 'an empty type'}",
            code="UNSUPPORTED_MEDIA_TYPE",
        )
    body = await request.body()
    try:
        data = msgspec.json.decode(body, type=body_type)
        key = repeated_key(body, data)
    except msgspec.MsgspecError as exc:
        raise strict_decode_error(exc) from exc
    except ValueError as exc:
        raise InvalidRequest("the body is not valid JSON", code="MALFORMED_JSON") from exc
    if key is not None:
        raise InvalidRequest(
            f"the key {key[:60]} appears more than once in the body",
            code="MALFORMED_JSON",
            field=key[:60],
        )
    return data


def status_trans_key(query_string: bytes) -> str:
    """The transKey of a STATUS query string, which may hold that one parameter and no other.

    An unknown parameter is refused as an unknown body field is (UNKNOWN_FIELD), and a repeated
    transKey as ambiguous (INVALID_FIELD): neither is let pass silently. The express lane reads
    the query with this same function.
    """
    found: list[str] = []
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name != "transKey":
            shown = name[:60]
            raise InvalidRequest(
                f"unknown query parameter {shown!r}; STATUS takes transKey only",
                code="UNKNOWN_FIELD",
                field=shown,
            )
        found.append(value)
    if not found:
        raise InvalidRequest("the transKey query parameter is required", field="transKey")
    if len(found) > 1:
        raise InvalidRequest(
            "the transKey query parameter is given more than once", field="transKey"
        )
    return found[0]


def payment_out(view: PaymentView) -> PaymentOut:
    """The wire form of a payment."""
    return payment_wire(view.payment, view.service.name if view.service else None)


def _answer(view: PaymentView) -> Response[PaymentOut]:
    headers = {"Idempotent-Replayed": "true"} if view.replayed else None
    return Response(payment_out(view), headers=headers, status_code=200)


@post(
    "/login",
    operation_id="LOGIN",
    summary="LOGIN — open the terminal's session",
    description=(
        "Log in once; the session lasts until LOGOUT, the idle timeout, or an administrator "
        "ends it. One device per mid: another `key` is refused while a session is live; the "
        "same `key` replaces its own session."
    ),
    responses=_errors(401, 403, 409, 413, 415, 429),
    tags=[TAG],
    status_code=200,
)
async def login(
    state: State, request: Request[Any, Any, Any], data: JSONBody[LoginBody]
) -> LoginAnswer:
    """LOGIN."""
    data = await strict(request, LoginBody)
    gw = gateway_of(state)
    # Failed LOGINs are also limited per client address (service/ratelimit.py).
    async with login_attempt(gw.db, gw.settings, request.scope, gw.clock()):
        result = await gw.login(
            mid=data.mid,
            key=data.key,
            password=data.password,
            os_value=data.os,
            request_id=request_id_of(request.scope),
        )
    return LoginAnswer(session_token=result.session_token, expires_at=result.expires_at)


@post(
    "/logout",
    operation_id="LOGOUT",
    summary="LOGOUT — end the session",
    responses=_errors(401, 403),
    tags=[TAG],
    security=SECURITY,
    status_code=200,
)
async def logout(state: State, request: Request[Any, Any, Any]) -> Empty:
    """LOGOUT."""
    await gateway_of(state).logout(bearer(request), request_id_of(request.scope))
    return Empty()


@post(
    "/payments",
    operation_id="REQUEST",
    summary="REQUEST — charge the customer's code",
    description=(
        "The terminal scanned the code on the customer's phone. The answer is the payment: "
        "COMPLETED, FAILED (with failureCode), or PENDING with pendingReason "
        "WAITING_FOR_CUSTOMER (the wallet asks the customer to confirm) or OUTCOME_UNKNOWN "
        "(the provider has not answered yet) — then poll PAYCHECK. Either one still PENDING at "
        "the give-up time (60 s; WeChat Pay 30 s) is cancelled at the provider and ends FAILED "
        "(REVERSED). transKey is the idempotency "
        "key: a retry with the same transKey and parameters answers the same payment and never "
        "charges twice."
    ),
    responses=_errors(*AUTHED, 409, 415, 422),
    tags=[TAG],
    security=SECURITY,
    status_code=200,
)
async def request_payment(
    state: State, request: Request[Any, Any, Any], data: JSONBody[RequestBody]
) -> Response[PaymentOut]:
    """REQUEST."""
    data = await strict(request, RequestBody)
    view = await gateway_of(state).request(
        bearer(request),
        trans_key=data.trans_key,
        amount=data.amount,
        code=data.code,
        service_id=data.service_id,
        request_id=request_id_of(request.scope),
    )
    return _answer(view)


# Path parameters keep the guide's name (transId) so the OpenAPI paths read like the guide.
TransId = Annotated[
    str,
    Parameter(
        description="The 10-digit payment number",
        max_length=10,
        schema_extra={"pattern": json_schema_pattern("transId")},
    ),
]


@get(
    "/payments/{transId:str}",
    operation_id="PAYCHECK",
    summary="PAYCHECK — a payment by transId",
    description="For a PENDING payment the gateway asks the provider (at most once a second).",
    responses=_errors(*AUTHED),
    tags=[TAG],
    security=SECURITY,
)
async def paycheck(state: State, request: Request[Any, Any, Any], transId: TransId) -> PaymentOut:
    """PAYCHECK."""
    view = await gateway_of(state).paycheck(bearer(request), transId, request_id_of(request.scope))
    return payment_out(view)


@get(
    "/payments",
    operation_id="STATUS",
    summary="STATUS — a payment by transKey",
    description=(
        "Find a payment by the transKey the terminal generated, without its transId. transKey "
        "is the only query parameter: another one is refused (400 UNKNOWN_FIELD), and so is "
        "transKey given twice (400 INVALID_FIELD)."
    ),
    responses=_errors(*AUTHED),
    tags=[TAG],
    security=SECURITY,
)
async def status(
    state: State,
    request: Request[Any, Any, Any],
    trans_key: Annotated[
        str | None,
        # Required, though optional here so that its absence gets our own message (from
        # status_trans_key): the OpenAPI description says so, and describes a plain string of
        # the transKey format.
        QueryParameter(
            name="transKey",
            description="The terminal's transKey",
            required=True,
            schema_extra={
                "type": "string",
                "oneOf": None,
                "pattern": json_schema_pattern("transKey"),
            },
        ),
    ] = None,
) -> PaymentOut:
    """STATUS."""
    # The framework keeps the last of repeated parameters and ignores unknown ones, so the raw
    # query string is read instead; ``trans_key`` is there for the OpenAPI description.
    key = status_trans_key(request.scope.get("query_string", b""))
    view = await gateway_of(state).status(bearer(request), key, request_id_of(request.scope))
    return payment_out(view)


@post(
    "/payments/{transId:str}/refunds",
    operation_id="CANCEL",
    summary="CANCEL — refund a payment (full or partial)",
    description=(
        "Needs the terminal's passCode. Omit amount to refund all that remains. Send a "
        "refundKey to make retries safe: the same refundKey answers the same refund. Five wrong "
        "passCodes lock refunds on the terminal."
    ),
    responses=_errors(*AUTHED, 409, 415),
    tags=[TAG],
    security=SECURITY,
    status_code=200,
)
async def cancel(
    state: State, request: Request[Any, Any, Any], transId: TransId, data: JSONBody[RefundBody]
) -> Response[PaymentOut]:
    """CANCEL."""
    data = await strict(request, RefundBody)
    view = await gateway_of(state).refund(
        bearer(request),
        transId,
        passcode=data.pass_code,
        amount=data.amount,
        refund_key=data.refund_key,
        request_id=request_id_of(request.scope),
    )
    return _answer(view)


@put(
    "/payments/{transId:str}/voucher",
    operation_id="VOUCHERNO",
    summary="VOUCHERNO — attach the shop's voucher number",
    responses=_errors(*AUTHED, 409, 415),
    tags=[TAG],
    security=SECURITY,
)
async def voucher(
    state: State, request: Request[Any, Any, Any], transId: TransId, data: JSONBody[VoucherBody]
) -> PaymentOut:
    """VOUCHERNO."""
    data = await strict(request, VoucherBody)
    view = await gateway_of(state).set_voucher(
        bearer(request), transId, data.voucher_no, request_id_of(request.scope)
    )
    return payment_out(view)


@post(
    "/qr-codes",
    operation_id="GET-QR-CODE",
    summary="GET-QR-CODE — a dynamic QR code for one payment",
    description=(
        "The answer is a PENDING payment (WAITING_FOR_CUSTOMER) with qrData, qrExpiresAt and "
        "links to PNG and SVG images of the code. ttlSeconds defaults to 300 (30 to 1800). "
        "After qrExpiresAt the payment becomes EXPIRED and can no longer be paid."
    ),
    responses=_errors(*AUTHED, 409, 415, 422),
    tags=[TAG],
    security=SECURITY,
    status_code=200,
)
async def get_qr_code(
    state: State, request: Request[Any, Any, Any], data: JSONBody[QrBody]
) -> Response[PaymentOut]:
    """GET-QR-CODE."""
    data = await strict(request, QrBody)
    view = await gateway_of(state).get_qr_code(
        bearer(request),
        trans_key=data.trans_key,
        amount=data.amount,
        service_id=data.service_id,
        ttl_seconds=data.ttl_seconds,
        request_id=request_id_of(request.scope),
    )
    return _answer(view)


async def _qr_text(state: State, request: Request[Any, Any, Any], trans_id: str) -> str:
    payment = await gateway_of(state).find_for_terminal(bearer(request), trans_id)
    if payment.kind is not PaymentKind.MERCHANT_QR or not payment.qr_data:
        raise NotFound(f"payment {trans_id} has no QR code", field="transId")
    return payment.qr_data


@get(
    "/payments/{transId:str}/qr.png",
    operation_id="GET-QR-CODE-png",
    summary="GET-QR-CODE image (PNG)",
    responses=_errors(*AUTHED),
    tags=[TAG],
    security=SECURITY,
    media_type="image/png",
)
async def qr_png(
    state: State, request: Request[Any, Any, Any], transId: TransId
) -> RawResponse[bytes]:
    """The payment's QR code as a PNG image."""
    buffer = io.BytesIO()
    segno.make(await _qr_text(state, request, transId), error="m").save(
        buffer, kind="png", scale=8, border=4
    )
    return RawResponse(buffer.getvalue(), media_type="image/png")


@get(
    "/payments/{transId:str}/qr.svg",
    operation_id="GET-QR-CODE-svg",
    summary="GET-QR-CODE image (SVG)",
    responses=_errors(*AUTHED),
    tags=[TAG],
    security=SECURITY,
    media_type="image/svg+xml",
)
async def qr_svg(
    state: State, request: Request[Any, Any, Any], transId: TransId
) -> RawResponse[bytes]:
    """The payment's QR code as an SVG image."""
    buffer = io.BytesIO()
    segno.make(await _qr_text(state, request, transId), error="m").save(
        buffer, kind="svg", scale=8, border=4, xmldecl=False
    )
    return RawResponse(buffer.getvalue(), media_type="image/svg+xml")


@post(
    "/identify",
    operation_id="IDENTIFY-SCANNED-QR-CODE",
    summary="IDENTIFY-SCANNED-QR-CODE — which wallet a scanned code belongs to",
    responses=_errors(*AUTHED, 415, 422),
    tags=[TAG],
    security=SECURITY,
    status_code=200,
)
async def identify_code(
    state: State, request: Request[Any, Any, Any], data: JSONBody[IdentifyBody]
) -> IdentifyAnswer:
    """IDENTIFY-SCANNED-QR-CODE."""
    data = await strict(request, IdentifyBody)
    service = await gateway_of(state).identify(bearer(request), data.code)
    return IdentifyAnswer(service.service_id, service.name, service.name_en)


ROUTES = [
    login,
    logout,
    request_payment,
    paycheck,
    status,
    cancel,
    voucher,
    get_qr_code,
    qr_png,
    qr_svg,
    identify_code,
]


@post(
    "/notifications/{provider:str}",
    operation_id="providerNotification",
    summary="Notifications from wallet providers (PayPay webhook, Alipay+ notifyPayment)",
    description=(
        "Providers POST here; the gateway verifies the notification (signature where the provider "
        "signs), then asks the provider where the payment stands and moves it accordingly. "
        "Configure the provider to call /notifications/paypay or /notifications/alipayplus."
    ),
    tags=["Providers"],
    status_code=200,
    responses=_errors(404, 413, 422),
)
async def provider_notification(
    state: State,
    request: Request[Any, Any, Any],
    provider: Annotated[str, PathParameter(description="paypay or alipayplus")],
) -> RawResponse[bytes]:
    """Verify a provider's notification, settle the payment, and answer the provider's ack."""
    # Unlike the terminal API's bodies, a notification's body is not refused for a repeated key
    # (the connectors decode it with msgspec, which keeps the last value). Its fields only name
    # the payment to check: the payment moves by what the provider answers when asked now, never
    # by the body's claims. The body is the provider's, and Alipay+ signs its exact bytes, so a
    # refusal could not be corrected by the sender and would only leave the payment to the
    # worker's polling; a forged body with a repeated key can name no more than any forged body.
    note = await gateway_of(state).notify(
        provider, request.url.path, dict(request.headers), await request.body()
    )
    return RawResponse(note.ack_body, status_code=note.ack_status, headers=dict(note.ack_headers))
