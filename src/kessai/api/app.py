"""The Litestar application: terminal API, sandbox pages, health, metrics and OpenAPI."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import swagger_ui_bundle  # type: ignore[import-untyped]
from litestar import Litestar, Request, Response, Router, get
from litestar.config.response_cache import ResponseCacheConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp

from kessai import __version__
from kessai.adapters.db import Database
from kessai.api import errors, metrics, sandbox_pages, terminal
from kessai.api.express import front
from kessai.api.wire import Health
from kessai.clock import Clock, system_clock
from kessai.config import Settings, log_level_from_env
from kessai.connectors import routing
from kessai.connectors.sandbox import SandboxWallets
from kessai.connectors.secrets import SecretBox
from kessai.console.mount import console_routes
from kessai.domain.errors import KessaiError
from kessai.service.gateway import Gateway
from kessai.service.worker import Worker

log = logging.getLogger("kessai")
DOCS_ASSETS = "/docs/assets"


def build_gateway(
    database_url: str,
    settings: Settings,
    clock: Clock = system_clock,
    *,
    http: httpx.AsyncClient | None = None,
) -> Gateway:
    """A gateway on ``database_url``: the sandbox wallets, and the merchants' real providers.

    Routing picks, per payment, the merchant's configured account for the service (sandbox by
    default). ``http`` is the transport every real connector uses (tests inject their own);
    provider secrets are decrypted with the key from ``KESSAI_SECRET_KEY``/``_FILE``.
    """
    db = Database(database_url)
    sandbox = SandboxWallets(
        db,
        public_url=settings.public_url,
        clock=clock,
        reveal_after_seconds=settings.sandbox_reveal_after_seconds,
    )
    # One pooled client for every provider call; per-call read timeouts come from each
    # provider's published limits, and the gateway bounds each call as a whole.
    http = http or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
    connectors = routing.build_connectors(db, http, SecretBox.from_env(), sandbox, clock=clock)
    return Gateway(db, connectors, settings, clock=clock, http=http)


@get("/healthz", tags=["Operations"], summary="Liveness and database check")
async def healthz(state: State) -> Response[Health]:
    """Answer 200 when the database answers, 503 otherwise."""
    gateway = terminal.gateway_of(state)
    try:
        await gateway.db.run(lambda conn: conn.execute(sa.text("SELECT 1")).scalar(), write=False)
    except Exception:  # any failure means "not healthy"; the details go to the log
        log.exception("health check failed")
        return Response(Health("unavailable", "down"), status_code=503)
    return Response(Health("ok", "up"))


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The OpenAPI description of the API."""
    schema = request.app.openapi_schema.to_schema()
    assert isinstance(schema, dict)
    return schema


def create_app(
    database_url: str,
    settings: Settings | None = None,
    *,
    clock: Clock = system_clock,
) -> Litestar:
    """Build the application; the database must already be migrated."""
    settings = settings or Settings.from_env()
    gateway = build_gateway(database_url, settings, clock)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        stop = asyncio.Event()
        worker = Worker(gateway) if settings.worker_in_serve else None
        task = asyncio.create_task(worker.run_forever(stop)) if worker else None
        try:
            yield
        finally:
            stop.set()
            if task is not None and worker is not None:
                await task
                await worker.aclose()
            await gateway.aclose()

    v1 = Router(path="/v1", route_handlers=terminal.ROUTES)
    docs_assets = create_static_files_router(
        path=DOCS_ASSETS, directories=[swagger_ui_bundle.swagger_ui_path], include_in_schema=False
    )
    handlers: list[Any] = [
        v1,
        healthz,
        metrics.metrics,
        openapi_json,
        docs_assets,
        terminal.provider_notification,
    ]
    if settings.sandbox_enabled:
        handlers.extend(sandbox_pages.ROUTES)
    handlers.extend(console_routes(settings))  # the merchant console under /console
    template_dir = Path(str(files("kessai") / "api" / "templates"))
    return Litestar(
        route_handlers=handlers,
        state=State({"gateway": gateway}),
        lifespan=[lifespan],
        # What the express lane in front (``serving_app``) does not serve gets its request id
        # and its metrics here.
        middleware=[errors.request_id_middleware, metrics.metrics_middleware],
        exception_handlers={
            KessaiError: errors.handle_kessai_error,
            ValidationException: errors.handle_validation,
            HTTPException: errors.handle_http,
            Exception: errors.handle_unexpected,
        },
        openapi_config=OpenAPIConfig(
            title="Kessai terminal API",
            version=__version__,
            description=(
                "The QR payment API for shop terminals. Operations carry the guide's names "
                "(LOGIN, REQUEST, PAYCHECK, …). Amounts are integer yen. Every error has the "
                'shape {"error": {"code", "message", "field", "retryable", "requestId"}}.'
            ),
            path="/docs",
            # Swagger UI is served from the installed swagger-ui-bundle package, so the docs
            # page works on machines without internet access.
            render_plugins=[
                SwaggerRenderPlugin(
                    js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                    css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                    standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                    path="/",
                    favicon=f"<link rel='icon' href='{DOCS_ASSETS}/favicon-32x32.png'>",
                )
            ],
            components=Components(
                security_schemes={
                    "sessionToken": SecurityScheme(
                        type="http", scheme="bearer", description="sessionToken from LOGIN"
                    )
                }
            ),
        ),
        template_config=TemplateConfig(directory=template_dir, engine=JinjaTemplateEngine),
        request_max_body_size=settings.max_body_bytes,
        response_cache_config=ResponseCacheConfig(),
        debug=False,
    )


def freeze_startup_objects() -> None:
    """Keep what startup built out of the cyclic garbage collector's later passes.

    A serving worker starts with about 140,000 long-lived objects (modules, the framework's
    routes and schemas, compiled statements). Each full collection used to walk all of them:
    about 100 ms with the GIL held, during which the worker answers nothing and, when it holds
    the database's write lock, the other workers wait too. Frozen, a full pass walks only what
    was made since (1-2 ms). Garbage is collected first, so nothing dead is kept.
    """
    gc.collect()
    gc.freeze()


def serving_app(
    database_url: str,
    settings: Settings | None = None,
    *,
    clock: Clock = system_clock,
    freeze_at_startup: bool = False,
) -> ASGIApp:
    """What ``kessai serve`` serves: the application behind the express lane (``api/express``).

    With ``freeze_at_startup`` (a serving process, not a test), startup's objects are left out of
    later garbage collections (``freeze_startup_objects``).
    """
    settings = settings or Settings.from_env()
    app = create_app(database_url, settings, clock=clock)
    if freeze_at_startup:
        app.on_startup.append(freeze_startup_objects)
    return front(app, settings.max_body_bytes)


def app_from_env() -> ASGIApp:
    """The uvicorn factory used by ``kessai serve``: configuration comes from the environment."""
    url = os.environ.get("KESSAI_DATABASE_URL", "sqlite:///kessai.db")
    level = log_level_from_env()
    logging.basicConfig(level=level)
    app = serving_app(url, Settings.from_env(), freeze_at_startup=True)
    # Litestar's own logging setup (run while the app is built) resets the root logger to INFO;
    # the level asked for must win.
    logging.getLogger().setLevel(level)
    # httpx logs every request's whole URL at INFO, and a merchant's webhook URL may carry a
    # token in its query: httpx logs only its warnings, whatever the level. (httpcore's DEBUG
    # lines name hosts and ports, never a path or query.)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    return app
