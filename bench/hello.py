"""The ceiling: the smallest useful Starlette app, measured beside the gateway in the same run.

It reads a small JSON body and answers a small JSON object, as REQUEST does, with nothing else:
no database, no validation, no middleware. Served by uvicorn with the same workers, event loop
and HTTP parser as `kessai serve`, its rate is what Python web serving costs on this machine.

    .venv/bin/uvicorn hello:app --app-dir bench --workers 2
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hello(request: Request) -> JSONResponse:
    """Answer the transKey of the JSON body, as a payment answer names its own."""
    body = await request.json()
    return JSONResponse({"status": "COMPLETED", "transKey": body.get("transKey")})


async def healthz(request: Request) -> JSONResponse:
    """Readiness, for the bench to wait on."""
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/hello", hello, methods=["POST"]), Route("/healthz", healthz, methods=["GET"])]
)
