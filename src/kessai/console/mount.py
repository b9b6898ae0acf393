"""Mounting the console in the application: its routers and static files."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from kessai.config import Settings
from kessai.console.config import ConsoleConfig
from kessai.console.routes import ROUTES
from kessai.console.web import EXCEPTION_HANDLERS, OPT_CONFIG, gate

STATIC_PATH = "/console/static"
STATIC_MAX_AGE_SECONDS = 300


def console_routes(settings: Settings) -> list[Any]:
    """The console's routers, configured from ``settings`` and ``KESSAI_CONSOLE_*``."""
    config = ConsoleConfig.from_env(settings.public_url)
    pages = Router(
        path="/console",
        route_handlers=ROUTES,
        before_request=gate,
        exception_handlers=EXCEPTION_HANDLERS,
        opt={OPT_CONFIG: config},
        include_in_schema=False,
    )
    static = create_static_files_router(
        path=STATIC_PATH,
        directories=[str(files("kessai") / "console" / "static")],
        name="console_static",
        include_in_schema=False,
        # Short, so that a new version's stylesheet is picked up soon after an upgrade.
        cache_control=CacheControlHeader(public=True, max_age=STATIC_MAX_AGE_SECONDS),
    )
    return [pages, static]


__all__ = ["console_routes"]
