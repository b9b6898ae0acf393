"""Turning every failure into the one error envelope, with a request id."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    SerializationException,
    ValidationException,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from kessai.api.wire import ErrorBody, ErrorDetail
from kessai.domain.errors import InvalidRequest, KessaiError
from kessai.security import new_request_id

log = logging.getLogger("kessai.api")

_FIELD_IN_MESSAGE = re.compile(r"`\$\.([A-Za-z0-9_]+)")
_MISSING = re.compile(r"missing required field `([A-Za-z0-9_]+)`")
_UNKNOWN = re.compile(r"unknown field `([^`]{0,60})")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def request_id_of(scope: Scope) -> str:
    """The id of this request, given by the middleware or, for unrouted requests, made here."""
    state = scope.setdefault("state", {})
    value = state.get("request_id")
    if not isinstance(value, str):
        # Requests that match no route never pass the middleware.
        value = state["request_id"] = new_request_id()
    return value


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every request an id, and echo it in the X-Request-Id header of the answer."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def envelope(
    request_id: str,
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    retryable: bool = False,
    retry_after_seconds: int | None = None,
) -> Response[ErrorBody]:
    """The error answer every failure ends as."""
    detail = ErrorDetail(code, message, field, retryable, request_id)
    return _answer(detail, status, retry_after_seconds)


def _answer(
    detail: ErrorDetail, status: int, retry_after_seconds: int | None = None
) -> Response[ErrorBody]:
    headers = {"X-Request-Id": detail.request_id}
    if retry_after_seconds:
        headers["Retry-After"] = str(retry_after_seconds)
    return Response(ErrorBody(detail), status_code=status, headers=headers)


def domain_error(request_id: str, exc: KessaiError) -> ErrorDetail:
    """What the envelope says of a domain error: its own code, message and field."""
    return ErrorDetail(exc.code, exc.message, exc.field, exc.retryable, request_id)


def internal_error(request_id: str) -> ErrorDetail:
    """What the envelope says of a bug: nothing but the request id to quote.

    Call it while handling the exception: the traceback goes to the log with the request id.
    """
    log.exception("unexpected error (request %s)", request_id)
    message = f"internal error; quote request id {request_id}"
    return ErrorDetail("INTERNAL_ERROR", message, None, True, request_id)


def handle_kessai_error(request: Request[Any, Any, Any], exc: KessaiError) -> Response[ErrorBody]:
    """A domain error: its own code, status and field."""
    detail = domain_error(request_id_of(request.scope), exc)
    return _answer(detail, exc.http_status, exc.retry_after_seconds)


def handle_validation(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[ErrorBody]:
    """Malformed JSON, wrong types, missing or unknown fields, as decoded by msgspec."""
    rid = request_id_of(request.scope)
    detail = str(exc.detail)
    if "malformed" in detail.lower() or ("JSON" in detail and "Validation failed" not in detail):
        return envelope(rid, 400, "MALFORMED_JSON", "the body is not valid JSON")
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(first.get("message", detail))
    key = first.get("key")
    # A body cut short, or no body at all, is malformed JSON, whatever words the decoder used.
    if "truncated" in message.lower() or message.strip("'\"") == "data":
        return envelope(
            rid, 400, "MALFORMED_JSON", "the body is not valid JSON (cut short or empty)"
        )
    if (match := _UNKNOWN.search(message)) is not None:
        return envelope(
            rid, 400, "UNKNOWN_FIELD", f"unknown field {match.group(1)}", match.group(1)
        )
    if (match := _MISSING.search(message)) is not None:
        return envelope(rid, 400, "INVALID_FIELD", f"{match.group(1)} is required", match.group(1))
    if "Expected `object`" in message and key in (None, "data"):
        return envelope(rid, 400, "MALFORMED_JSON", "the body must be a JSON object")
    if (match := _FIELD_IN_MESSAGE.search(message)) is not None:
        key = match.group(1)
    field = key if isinstance(key, str) and key != "data" else None
    clean = message.replace("`", "")
    text = f"{field}: {clean}" if field else clean
    if first.get("source") == "query" and field:
        text = f"query parameter {field}: {clean}"
    return envelope(rid, 400, "INVALID_FIELD", text, field)


def strict_decode_error(exc: msgspec.MsgspecError) -> InvalidRequest:
    """The error for a body that fails strict decoding (no type coercion at all)."""
    message = str(exc)
    if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
        return InvalidRequest("the body is not valid JSON", code="MALFORMED_JSON")
    match = _FIELD_IN_MESSAGE.search(message)
    field = match.group(1) if match else None
    if (unknown := _UNKNOWN.search(message)) is not None:
        return InvalidRequest(
            f"unknown field {unknown.group(1)}", code="UNKNOWN_FIELD", field=unknown.group(1)
        )
    if (missing := _MISSING.search(message)) is not None:
        return InvalidRequest(f"{missing.group(1)} is required", field=missing.group(1))
    if field is None and "Expected `object`" in message:
        return InvalidRequest("the body must be a JSON object", code="MALFORMED_JSON")
    clean = message.replace("`", "").split(" - at ")[0]
    return InvalidRequest(f"{field}: {clean}" if field else clean, field=field)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    """Routing and framework errors, in our envelope."""
    rid = request_id_of(request.scope)
    if isinstance(exc, NotFoundException):
        return envelope(rid, 404, "NOT_FOUND", "no such route")
    if isinstance(exc, MethodNotAllowedException):
        answer = envelope(rid, 405, "METHOD_NOT_ALLOWED", "this route does not take that method")
        # RFC 9110: a 405 names the methods the route does take. The router puts them in the
        # exception's headers; the envelope would otherwise drop them.
        allow = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow")
        if allow:
            answer.headers["Allow"] = allow
        return answer
    detail = str(exc.detail).lower()
    if exc.status_code == 400 and ("malformed" in detail or "truncated" in detail):
        return envelope(rid, 400, "MALFORMED_JSON", "the body is not valid JSON")
    if exc.status_code == 400 and isinstance(exc.__cause__, SerializationException):
        # The framework could not decode the body at all, for instance bytes that are not UTF-8
        # inside a JSON string: it says so in a 400 made from its decoding error.
        why = " (not UTF-8)" if "utf-8" in detail else ""
        return envelope(rid, 400, "MALFORMED_JSON", f"the body is not valid JSON{why}")
    if exc.status_code == 413:
        return envelope(rid, 413, "BODY_TOO_LARGE", "the request body is too large")
    if 400 <= exc.status_code < 500:
        return envelope(rid, exc.status_code, "INVALID_FIELD", str(exc.detail))
    log.error("framework error %s on %s", exc.status_code, request.url.path)
    return envelope(rid, 500, "INTERNAL_ERROR", "internal error", retryable=True)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """A bug. The message stays generic; the log has the traceback and the request id."""
    rid = request_id_of(request.scope)
    if isinstance(exc, RecursionError | UnicodeDecodeError) and request.method in _BODY_METHODS:
        # The framework's JSON decoder raises these, not a decoding error, for a body nested
        # deeper than it recurses or one that is not UTF-8: bad input, which must answer 400.
        log.warning("request %s: undecodable body (%s)", rid, type(exc).__name__)
        message = "the body is not valid JSON (not UTF-8, or nested too deeply)"
        return envelope(rid, 400, "MALFORMED_JSON", message)
    return _answer(internal_error(rid), 500)
