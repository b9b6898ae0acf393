"""The console's request plumbing: who is logged in, CSRF, roles, cookies and error pages.

Every console route passes ``gate`` (the router's before-request hook) first, so no handler can
forget a check:

- the session cookie is resolved to a user (one read of ``console_sessions``);
- a route not marked ``public`` redirects to the login page without one;
- every POST must carry the CSRF token of its session in the ``_csrf`` field — before login, the
  token of a double-submit cookie — or it is refused with 403;
- a route marked ``owner_only`` answers 403 to staff, whatever the page showed them.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any, Final, TypeVar
from urllib.parse import quote

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.response import Redirect
from litestar.types import ExceptionHandlersMap
from sqlalchemy.engine import Connection

from kessai.api.errors import request_id_of
from kessai.api.terminal import gateway_of
from kessai.console.config import ConsoleConfig
from kessai.console.i18n import Translator, normalise_lang
from kessai.console.render import html
from kessai.console.users import ConsoleUser, load_session
from kessai.domain.errors import KessaiError
from kessai.security import constant_time_equal
from kessai.service.gateway import Gateway

log = logging.getLogger("kessai.console")
T = TypeVar("T")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD: Final = "_csrf"
LANG_COOKIE: Final = "kessai_lang"
LANG_COOKIE_SECONDS: Final = 400 * 24 * 3600  # browsers cap cookie lifetimes at 400 days
MAX_COOKIE_LENGTH: Final = 128
HOME: Final = "/console/payments"
OPT_CONFIG: Final = "console_config"

AnyRequest = Request[Any, Any, Any]


def config_of(request: AnyRequest) -> ConsoleConfig:
    """The console configuration the router was built with."""
    config = request.route_handler.opt[OPT_CONFIG]
    assert isinstance(config, ConsoleConfig)
    return config


def gateway(request: AnyRequest) -> Gateway:
    """The application's gateway (database, clock, refunds)."""
    return gateway_of(request.app.state)


async def read(request: AnyRequest, fn: Callable[[Connection], T]) -> T:
    """Run a read-only unit of work."""
    return await gateway(request).db.run(fn, write=False)


async def write(request: AnyRequest, fn: Callable[[Connection], T]) -> T:
    """Run a unit of work that writes."""
    return await gateway(request).db.run(fn)


# -- cookies --------------------------------------------------------------------------------------


def session_cookie_name(config: ConsoleConfig) -> str:
    """The session cookie; with Secure, the ``__Host-`` prefix pins it to this host and path /."""
    return "__Host-kessai_session" if config.cookie_secure else "kessai_session"


def login_csrf_cookie_name(config: ConsoleConfig) -> str:
    """The double-submit cookie that protects the forms shown before login."""
    return "__Host-kessai_csrf" if config.cookie_secure else "kessai_csrf"


def cookie(
    config: ConsoleConfig, key: str, value: str, max_age: int, *, http_only: bool = True
) -> Cookie:
    """A console cookie: path /, SameSite=Lax, Secure as configured."""
    return Cookie(
        key=key,
        value=value,
        max_age=max_age,
        path="/",
        secure=config.cookie_secure,
        httponly=http_only,
        samesite="lax",
    )


def expired_cookie(config: ConsoleConfig, key: str) -> Cookie:
    """A cookie that deletes ``key`` in the browser."""
    return cookie(config, key, "", 0)


def lang_cookie(config: ConsoleConfig, lang: str) -> Cookie:
    """The remembered language."""
    return cookie(config, LANG_COOKIE, normalise_lang(lang), LANG_COOKIE_SECONDS)


def lang_of(request: AnyRequest) -> str:
    """The page language: the remembered choice, Japanese by default."""
    return normalise_lang(request.cookies.get(LANG_COOKIE))


# -- who is asking --------------------------------------------------------------------------------


def user_of(request: AnyRequest) -> ConsoleUser | None:
    """The logged-in user the gate found, if any."""
    user = getattr(request.state, "console_user", None)
    return user if isinstance(user, ConsoleUser) else None


def require_user(request: AnyRequest) -> ConsoleUser:
    """The logged-in user of a non-public route (the gate has made sure there is one)."""
    user = user_of(request)
    assert user is not None, "a non-public console route ran without a user"
    return user


def safe_next(value: str | None) -> str:
    """A console path to go back to; anything else (another site, odd text) goes home."""
    if (
        value
        and value.startswith("/console")
        and not value.startswith("//")
        and "\\" not in value
        and value.isprintable()
        and len(value) <= 2000
    ):
        return value
    return HOME


def here(request: AnyRequest) -> str:
    """The page's path and query, to come back to after a language switch or a login."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def _load_user(request: AnyRequest, config: ConsoleConfig) -> ConsoleUser | None:
    raw = request.cookies.get(session_cookie_name(config))
    if not raw or len(raw) > MAX_COOKIE_LENGTH:
        return None
    now = gateway(request).clock()
    return await read(request, lambda conn: load_session(conn, raw, now, config))


async def gate(request: AnyRequest) -> Response[Any] | None:
    """Before every console route: find the user, then enforce login, CSRF and role."""
    config = config_of(request)
    user = await _load_user(request, config)
    request.state.console_user = user
    opt = request.route_handler.opt
    if user is None and not opt.get("public"):
        target = quote(here(request) if request.method in SAFE_METHODS else HOME, safe="/?=&")
        return Redirect(f"/console/login?next={target}", status_code=303)
    if request.method not in SAFE_METHODS:
        form = await request.form()
        sent = form.get(CSRF_FIELD) or request.headers.get("x-csrf-token") or ""
        expected = user.csrf_token if user else request.cookies.get(login_csrf_cookie_name(config))
        if not (
            isinstance(sent, str)
            and sent
            and expected
            and len(sent) <= MAX_COOKIE_LENGTH
            and constant_time_equal(sent, expected)
        ):
            log.warning(
                "console: %s %s refused without a valid CSRF token",
                request.method,
                request.url.path,
            )
            return error_page(request, 403, "error.forbidden_title", "error.csrf")
    if opt.get("owner_only") and (user is None or not user.is_owner):
        log.warning(
            "console: %s %s refused to a %s",
            request.method,
            request.url.path,
            user.role if user else "visitor",
        )
        return error_page(request, 403, "error.forbidden_title", "error.owner_only")
    return None


# -- pages ----------------------------------------------------------------------------------------


def page(
    request: AnyRequest,
    template: str,
    *,
    status_code: int = 200,
    cookies: tuple[Cookie, ...] = (),
    **context: Any,
) -> Response[str]:
    """Render a console page with the frame's context: user, CSRF token, language, location.

    Before login the CSRF token is the double-submit cookie's, set here when the browser has none.
    """
    config = config_of(request)
    user = user_of(request)
    extra = list(cookies)
    if user is not None:
        csrf = user.csrf_token
    else:
        existing = request.cookies.get(login_csrf_cookie_name(config))
        if existing and len(existing) <= MAX_COOKIE_LENGTH:
            csrf = existing
        else:
            csrf = secrets.token_urlsafe(32)
            extra.append(
                cookie(config, login_csrf_cookie_name(config), csrf, config.session_max_seconds)
            )
    context.setdefault("info", None)
    context.setdefault("notice", None)
    context.setdefault("error", None)
    context.setdefault("section", "")
    return html(
        template,
        str(context.pop("lang", None) or lang_of(request)),
        status_code=status_code,
        cookies=extra,
        user=user,
        csrf=csrf,
        here=here(request),
        **context,
    )


def error_page(
    request: AnyRequest,
    status_code: int,
    heading_key: str,
    message_key: str | None = None,
    *,
    message: str | None = None,
) -> Response[str]:
    """An error page in the user's language, with the request id to quote."""
    t = Translator(lang_of(request))
    return page(
        request,
        "error.html",
        status_code=status_code,
        heading=t(heading_key),
        message=message if message is not None else t(message_key or heading_key),
        request_id=request_id_of(request.scope),
        back=HOME if user_of(request) else "/console/login",
    )


def kessai_error_message(t: Translator, exc: KessaiError) -> str:
    """A domain error in the page's language; codes without a translation keep their message."""
    key = f"err.{exc.code}"
    if t.has(key):
        return t(key)
    return t("err.other", code=exc.code, message=exc.message)


def handle_kessai_error(request: AnyRequest, exc: KessaiError) -> Response[str]:
    """A domain error raised by a console route, as a page."""
    t = Translator(lang_of(request))
    heading = "error.not_found_title" if exc.http_status == 404 else "error.bad_request_title"
    return error_page(request, exc.http_status, heading, message=kessai_error_message(t, exc))


def handle_http_error(request: AnyRequest, exc: HTTPException) -> Response[str]:
    """Framework errors (a bad path parameter, a missing route) as pages."""
    if isinstance(exc, NotFoundException) or exc.status_code == 404:
        return error_page(request, 404, "error.not_found_title", "error.not_found")
    if isinstance(exc, ValidationException) or 400 <= exc.status_code < 500:
        return error_page(
            request, exc.status_code, "error.bad_request_title", message=str(exc.detail)
        )
    return handle_unexpected(request, exc)


def handle_unexpected(request: AnyRequest, exc: Exception) -> Response[str]:
    """A bug: a generic page with the request id; the log has the traceback."""
    log.exception("console: unexpected error (request %s)", request_id_of(request.scope))
    return error_page(request, 500, "error.internal_title", "error.internal")


EXCEPTION_HANDLERS: Final[ExceptionHandlersMap] = {
    KessaiError: handle_kessai_error,
    HTTPException: handle_http_error,
    Exception: handle_unexpected,
}
