"""An open-loop HTTP/1.1 load generator: requests leave on a fixed schedule, answered or not.

A closed-loop tool (wrk) sends the next request only when an answer came back, so a server that
stalls also stalls the measurement, and the requests that would have waited are never counted
("coordinated omission"). Here request i is due at ``start + i / rate`` whatever happened before,
and its latency is measured from that *scheduled* instant: time spent waiting for a free
connection, or queued because the server fell behind, is part of the figure, as it would be for a
shop terminal.

Requests are pre-built bytes sent over keep-alive connections (asyncio streams, no HTTP library
in the way). A due request goes to the first idle connection; when all are busy it waits for
one, its clock already running. Requests still unanswered when the drain time is over count as
infinitely slow, so quantiles never flatter an overloaded server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def nearest_rank(ordered: Sequence[float], q: float) -> float:
    """The q-quantile (0..1, nearest rank) of ``ordered``, sorted and not empty."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def per_second(samples: Iterable[tuple[float, float]], q: float) -> dict[int, float]:
    """The q-quantile of the values of each whole second, from (seconds since start, value) pairs.

    Only seconds with a sample are in it. A quantile over a whole run cannot tell a steady tail
    from one bad second; these can.
    """
    seconds: dict[int, list[float]] = {}
    for at, value in samples:
        seconds.setdefault(int(at), []).append(value)
    return {second: nearest_rank(sorted(values), q) for second, values in sorted(seconds.items())}


@dataclass
class OpenLoopResult:
    """What one open-loop run saw. Latencies are seconds from each request's scheduled time."""

    scheduled: int
    rate: float
    latencies: list[float] = field(default_factory=list)
    # For each answer, when its request was due: seconds after the first one (same order).
    due: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    accepted: int = 0  # answers the ``accept`` predicate liked (e.g. a COMPLETED payment)
    errors: int = 0  # connections that failed mid-request
    send_lag_max: float = 0.0  # how late the scheduler itself ever was

    @property
    def answered(self) -> int:
        """Requests that got an HTTP answer."""
        return len(self.latencies)

    @property
    def unanswered(self) -> int:
        """Requests never answered (not sent in time, lost, or still waiting at the end)."""
        return self.scheduled - self.answered

    def quantile(self, q: float) -> float:
        """The q-quantile (0..1) of latency in seconds; ``inf`` when it falls on unanswered ones.

        Nearest-rank over every scheduled request, so unanswered requests weigh as the slowest.
        """
        if self.scheduled == 0:
            return math.nan
        rank = max(1, math.ceil(q * self.scheduled))
        if rank > self.answered:
            return math.inf
        return sorted(self.latencies)[rank - 1]

    def by_second(self, q: float) -> list[float]:
        """The q-quantile of each second's answered requests (by when they were due), in order.

        A second with no answer at all reads ``inf``.
        """
        found = per_second(zip(self.due, self.latencies, strict=True), q)
        return [found.get(second, math.inf) for second in range(max(found, default=-1) + 1)]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response (Content-Length or chunked); answer status and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts)
    return status, await reader.readexactly(length or 0)


async def run_open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    rate: float,
    seconds: float,
    connections: int = 128,
    drain_seconds: float = 15.0,
    accept: Callable[[int, bytes], bool] | None = None,
) -> OpenLoopResult:
    """Send ``rate × seconds`` requests on schedule, cycling through ``requests``.

    ``requests`` are complete HTTP/1.1 requests (keep-alive). Each is sent at most once per cycle;
    pass as many as will be sent when every request must be distinct (payments). After the last
    one is due, answers are awaited for at most ``drain_seconds``.
    """
    count = max(1, round(rate * seconds))
    result = OpenLoopResult(scheduled=count, rate=rate)
    queue: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
    everything_answered = asyncio.Event()
    finished = 0

    def settle() -> None:
        nonlocal finished
        finished += 1
        if finished == count:
            everything_answered.set()

    connected = 0
    all_connected = asyncio.Event()
    start = 0.0  # when the first request is due, set before any is queued

    async def connection() -> None:
        nonlocal connected
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            # Connections are opened before the clock starts: the run measures requests, not
            # TCP handshakes.
            reader, writer = await asyncio.open_connection(host, port)
            connected += 1
            if connected == connections:
                all_connected.set()
            while True:
                due, index = await queue.get()
                if writer is None or reader is None:
                    reader, writer = await asyncio.open_connection(host, port)
                try:
                    writer.write(requests[index % len(requests)])
                    status, body = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader = writer = None
                    settle()
                    continue
                result.latencies.append(time.perf_counter() - due)
                result.due.append(due - start)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if accept is not None and accept(status, body):
                    result.accepted += 1
                settle()
        finally:
            if writer is not None:
                writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    try:
        await asyncio.wait_for(all_connected.wait(), timeout=30)
        start = time.perf_counter() + 0.05
        for index in range(count):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                result.send_lag_max = max(result.send_lag_max, -delay)
            queue.put_nowait((due, index))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(everything_answered.wait(), timeout=drain_seconds)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return result


def _on_a_fresh_loop(function: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """``function`` made blocking: each call runs it to the end on a fresh event loop.

    The loop is uvloop's when installed, as uvicorn uses; the signature stays the coroutine's.
    """

    def blocking(*args: P.args, **kwargs: P.kwargs) -> T:
        coroutine = function(*args, **kwargs)
        # The bench's process holds every code it issued, its requests and its report: a full
        # collection over them took 60-94 ms here, and each request due meanwhile would be sent
        # late and counted slow against the server. Frozen, they are out of the collector's way,
        # and it walks only what the run itself makes. ``gc.unfreeze`` gives back every frozen
        # object, so a process that had frozen some itself keeps them frozen.
        ours = gc.get_freeze_count() == 0
        gc.freeze()
        try:
            try:
                import uvloop  # noqa: PLC0415
            except ImportError:
                return asyncio.run(coroutine)
            return uvloop.run(coroutine)
        finally:
            if ours:
                gc.unfreeze()

    blocking.__doc__ = f"Run :func:`{function.__name__}` on a fresh event loop."
    return blocking


# The bench's entry point: run_open_loop, blocking, with the very same parameters.
run = _on_a_fresh_loop(run_open_loop)


def http_request(
    method: str,
    path: str,
    host: str,
    *,
    token: str | None = None,
    body: bytes | None = None,
) -> bytes:
    """One keep-alive HTTP/1.1 request as bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
