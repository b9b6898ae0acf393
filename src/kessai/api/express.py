"""The express lane: REQUEST, PAYCHECK and STATUS without the framework's per-request machinery.

These three operations are most of a terminal's traffic. The framework's generic work for each
request — building a Request, resolving handler parameters, decoding the body a first time with
type coercion, building a Response — cost more than the operation itself. This middleware runs
innermost, after routing, the request id and the metrics, and serves a well-formed call to one
of the three directly: one strict msgspec decode, the gateway call, one msgspec encode.

It answers only what it fully understands. A body that is missing, oversized, not JSON or not
strictly valid goes on to the framework's handler unchanged (its bytes replayed), so every error
answer stays exactly what the handler gives. Errors the gateway raises propagate to the same
exception handlers as the handler's would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from kessai.api.errors import request_id_of
from kessai.api.terminal import bearer_token, gateway_of, payment_out
from kessai.api.wire import RequestBody
from kessai.service.gateway import Gateway, PaymentView

_encoder: Final = msgspec.json.Encoder()
_request_decoder: Final = msgspec.json.Decoder(RequestBody)
_JSON_TYPES: Final = frozenset({b"application/json", b"application/json; charset=utf-8"})

_Handler = Callable[[Gateway, Scope, str, bytes], Awaitable[PaymentView | None]]


async def _request(gateway: Gateway, scope: Scope, token: str, body: bytes) -> PaymentView | None:
    try:
        data = _request_decoder.decode(body)
    except Exception:  # any failure is the handler's to explain, in its own words
        return None
    return await gateway.request(
        token,
        trans_key=data.trans_key,
        amount=data.amount,
        code=data.code,
        service_id=data.service_id,
        request_id=request_id_of(scope),
    )


async def _paycheck(
    gateway: Gateway, scope: Scope, token: str, body: bytes
) -> PaymentView | None:
    trans_id = scope["path_params"].get("transId")
    # Anything but ten ASCII digits gets the handler's own validation message.
    if not (
        isinstance(trans_id, str)
        and len(trans_id) == 10
        and trans_id.isascii()
        and trans_id.isdigit()
    ):
        return None
    return await gateway.paycheck(token, trans_id, request_id_of(scope))


async def _status(gateway: Gateway, scope: Scope, token: str, body: bytes) -> PaymentView | None:
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    if len(query) != 1 or query[0][0] != "transKey":
        return None
    return await gateway.status(token, query[0][1], request_id_of(scope))


_HANDLERS: Final[dict[str, tuple[bool, _Handler]]] = {
    # operation id -> (has a JSON body, handler)
    "REQUEST": (True, _request),
    "PAYCHECK": (False, _paycheck),
    "STATUS": (False, _status),
}


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


def express_middleware(max_body_bytes: int) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware factory, for a body limit the same as the framework's."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def express(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            handler: Any = scope.get("route_handler")
            entry = _HANDLERS.get(getattr(handler, "operation_id", None) or "")
            token = bearer_token(_header(scope, b"authorization"))
            if entry is None or token is None:
                await app(scope, receive, send)
                return
            has_body, serve = entry
            body = b""
            if has_body:
                length = _header(scope, b"content-length")
                content_type = (_header(scope, b"content-type") or b"").lower()
                if (
                    content_type not in _JSON_TYPES
                    or length is None
                    or not length.isdigit()
                    or int(length) > max_body_bytes
                ):
                    await app(scope, receive, send)
                    return
                messages, complete = await _read_body(receive, max_body_bytes)
                if complete is None:
                    await app(scope, _replaying(messages, receive), send)
                    return
                body = complete
                receive = _replaying(messages, receive)
            view = await serve(gateway_of(scope["app"].state), scope, token, body)
            if view is None:
                await app(scope, receive, send)
                return
            payload = _encoder.encode(payment_out(view))
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ]
            if view.replayed:
                headers.append((b"idempotent-replayed", b"true"))
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 200,
                "headers": headers,
            }
            done: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": payload,
                "more_body": False,
            }
            await send(start)
            await send(done)

        return express

    return middleware
