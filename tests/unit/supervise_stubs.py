"""Tiny ASGI apps for the workers of `kessai.cli.supervise` in tests/unit/test_supervise.py.

Spawned workers import this module by name: it is on the test run's import path, which spawned
processes inherit.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

# The environment variable naming stuck_once_app's marker file.
STUCK_MARKER = "SUPERVISE_STUCK_MARKER"

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def pid_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer every request with the worker's process id; GET /freeze blocks its event loop."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, fail=False)
        return
    if scope["path"] == "/freeze":
        # A synchronous call that never returns, as a stuck driver call would.
        time.sleep(3600)
    body = str(os.getpid()).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def stuck_once_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """``pid_app`` whose first worker never finishes its startup (its event loop stays free).

    The first worker to start creates the file named by ``STUCK_MARKER`` and waits forever, as
    one whose startup waits on a lock never granted would; later workers start normally.
    """
    if scope["type"] == "lifespan":
        marker = os.environ[STUCK_MARKER]
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            await _lifespan(receive, send, fail=False)
            return
        await asyncio.sleep(3600)
        return
    await pid_app(scope, receive, send)


async def broken_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """An app whose startup fails, as one whose database is unusable would."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, fail=True)


async def _lifespan(receive: Receive, send: Send, *, fail: bool) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if fail:
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
