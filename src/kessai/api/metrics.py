"""Prometheus metrics: requests by operation and status, and their latency.

With several worker processes, ``kessai serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` so that every
scrape sums all workers.
"""

from __future__ import annotations

import os
import time
from typing import Any

from litestar import Response, get
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("kessai_http_requests_total", "HTTP requests answered", ["operation", "status"])
LATENCY = Histogram(
    "kessai_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["operation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)


# Label children by (operation, status) and by operation: looking them up by label values on
# every request cost more than counting.
_counted: dict[tuple[str, int], Any] = {}
_timed: dict[str, Any] = {}


def observe(operation: str, status: int, seconds: float) -> None:
    """Count one answered request and its latency."""
    counter = _counted.get((operation, status))
    if counter is None:
        counter = _counted[operation, status] = REQUESTS.labels(operation, str(status))
    histogram = _timed.get(operation)
    if histogram is None:
        histogram = _timed[operation] = LATENCY.labels(operation)
    counter.inc()
    histogram.observe(seconds)


def _operation(scope: Scope) -> str:
    handler: Any = scope.get("route_handler")
    name = getattr(handler, "operation_id", None)
    return name if isinstance(name, str) else "other"


def metrics_middleware(app: ASGIApp) -> ASGIApp:
    """Count and time every HTTP request."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await app(scope, receive, capture)
        finally:
            observe(_operation(scope), status[0], time.perf_counter() - started)

    return middleware


@get(
    "/metrics",
    include_in_schema=True,
    tags=["Operations"],
    summary="Prometheus metrics",
    media_type="text/plain",
)
async def metrics() -> Response[bytes]:
    """Metrics in the Prometheus text format."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest()
    # The framework adds the charset itself; giving it twice makes strict parsers refuse it.
    return Response(body, media_type=CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8"))
