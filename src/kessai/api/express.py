"""The express lane: REQUEST, PAYCHECK and STATUS served in front of the framework.

These three operations are most of a terminal's traffic. For each request the framework builds a
Request, routes it through its middleware stack, resolves the handler's parameters, decodes the
body with type coercion and builds a Response: together several times the cost of the operation.
``Front`` is the outermost ASGI layer. It recognises a well-formed call to one of the three by its
method and path, and serves it itself with one strict msgspec decode (and the check for repeated
keys, ``terminal.repeated_key``), the gateway call and one msgspec encode, giving it a request id
and counting it in the metrics as the framework's middlewares would.

It serves only what it fully understands. Anything else — another route, a missing token, a body
that is missing, oversized, not JSON, not strictly valid or repeating a key, a transId that is not
ten digits, a STATUS query that is not exactly one transKey — goes on to the framework unchanged
(the body bytes already read are replayed), so every error answer for bad input stays exactly the
handler's. Errors the gateway raises are answered in the same envelope the framework's exception
handlers give; ``tests/integration/test_express.py`` checks both paths answer byte for byte alike.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    HTTPScope,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from kessai.api import metrics
from kessai.api.errors import domain_error, internal_error
from kessai.api.terminal import (
    bearer_token,
    gateway_of,
    payment_out,
    repeated_key,
    status_trans_key,
)
from kessai.api.wire import ErrorBody, RequestBody
from kessai.domain.errors import KessaiError
from kessai.security import new_request_id
from kessai.service.gateway import Gateway, PaymentView

_encoder: Final = msgspec.json.Encoder()
_request_decoder: Final = msgspec.json.Decoder(RequestBody)
_JSON_TYPES: Final = frozenset({b"application/json", b"application/json; charset=utf-8"})
_PAYMENTS: Final = "/v1/payments"
# "/v1/payments/" and a ten-digit transId.
_PAYCHECK_LENGTH: Final = len(_PAYMENTS) + 11

# An operation: the gateway call for (gateway, scope, token, body, request id); None declines.
_Serve = Callable[[Gateway, Scope, str, bytes, str], Awaitable[PaymentView | None]]


async def _request(
    gateway: Gateway, scope: Scope, token: str, body: bytes, request_id: str
) -> PaymentView | None:
    try:
        data = _request_decoder.decode(body)
        # msgspec keeps the last of repeated keys; the handler refuses such a body.
        if repeated_key(body, data) is not None:
            return None
    except Exception:  # any failure is the handler's to explain, in its own words
        return None
    return await gateway.request(
        token,
        trans_key=data.trans_key,
        amount=data.amount,
        code=data.code,
        service_id=data.service_id,
        request_id=request_id,
    )


async def _paycheck(
    gateway: Gateway, scope: Scope, token: str, body: bytes, request_id: str
) -> PaymentView | None:
    return await gateway.paycheck(token, scope["path"][len(_PAYMENTS) + 1 :], request_id)


async def _status(
    gateway: Gateway, scope: Scope, token: str, body: bytes, request_id: str
) -> PaymentView | None:
    try:
        trans_key = status_trans_key(scope.get("query_string", b""))
    except KessaiError:  # another parameter, or none, or two transKeys: the handler's to answer
        return None
    return await gateway.status(token, trans_key, request_id)


# The operations served here, by name; emptied, everything goes to the framework (tests).
OPERATIONS: Final[dict[str, _Serve]] = {
    "REQUEST": _request,
    "PAYCHECK": _paycheck,
    "STATUS": _status,
}


def _operation(scope: HTTPScope) -> str | None:
    """Which of the three operations this request asks for, from its method and path alone."""
    path = scope["path"]
    if scope.get("root_path"):
        return None
    method = scope["method"]
    if path == _PAYMENTS:
        return "REQUEST" if method == "POST" else "STATUS" if method == "GET" else None
    if (
        method == "GET"
        and len(path) == _PAYCHECK_LENGTH
        and path.startswith(_PAYMENTS)
        and path[len(_PAYMENTS)] == "/"
        and path[len(_PAYMENTS) + 1 :].isdigit()
        and path.isascii()
    ):
        return "PAYCHECK"
    return None


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[list[ReceiveMessage], bytes | None]:
    """The body's messages as received, and the body when complete and within ``limit``."""
    messages: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return messages, None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replaying(messages: list[ReceiveMessage], receive: Receive) -> Receive:
    """A receive that gives back what was already read, then carries on with the real one."""
    pending = list(messages)

    async def replay() -> ReceiveMessage:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def _error(request_id: str, exc: KessaiError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """A domain error's status, envelope and headers, as the framework's exception handler gives."""
    extra = []
    if exc.retry_after_seconds:
        extra.append((b"retry-after", str(exc.retry_after_seconds).encode()))
    return exc.http_status, _encoder.encode(ErrorBody(domain_error(request_id, exc))), extra


class Front:
    """The outermost ASGI layer: serves the express operations, hands the rest to ``app``."""

    def __init__(self, app: Litestar, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._gateway: Gateway | None = None

    @property
    def gateway(self) -> Gateway:
        """The gateway the framework's app was built with."""
        if self._gateway is None:
            self._gateway = gateway_of(self.app.state)
        return self._gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        name = _operation(scope)
        serve = OPERATIONS.get(name) if name is not None else None
        token = bearer_token(_header(scope, b"authorization")) if serve is not None else None
        if name is None or serve is None or token is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        body = b""
        if name == "REQUEST":
            length = _header(scope, b"content-length")
            content_type = (_header(scope, b"content-type") or b"").lower()
            if (
                content_type not in _JSON_TYPES
                or length is None
                or not length.isdigit()
                or int(length) > self.max_body_bytes
            ):
                await self.app(scope, receive, send)
                return
            messages, complete = await _read_body(receive, self.max_body_bytes)
            if complete is None:
                await self.app(scope, _replaying(messages, receive), send)
                return
            body = complete
            receive = _replaying(messages, receive)
        request_id = new_request_id()
        extra: list[tuple[bytes, bytes]] = []
        try:
            view = await serve(self.gateway, scope, token, body, request_id)
        except KessaiError as exc:
            status, payload, extra = _error(request_id, exc)
        except Exception:  # a bug: answered like the framework's last-resort handler
            status, payload = 500, _encoder.encode(ErrorBody(internal_error(request_id)))
        else:
            if view is None:
                await self.app(scope, receive, send)
                return
            status, payload = 200, _encoder.encode(payment_out(view))
            if view.replayed:
                extra.append((b"idempotent-replayed", b"true"))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"x-request-id", request_id.encode()),
            *extra,
        ]
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": status,
            "headers": headers,
        }
        done: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": payload,
            "more_body": False,
        }
        try:
            await send(start)
            await send(done)
        finally:
            metrics.observe(name, status, time.perf_counter() - started)


def front(app: Litestar, max_body_bytes: int) -> ASGIApp:
    """Put the express lane in front of ``app``."""
    return Front(app, max_body_bytes)
