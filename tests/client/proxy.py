"""A local HTTP/1.1 proxy that injects network faults, for the SDK's network and crash tests.

It runs an asyncio server in a thread and forwards each request to the gateway on a fresh
upstream connection. Rules, matched in order by method and path prefix, decide the fate of a
request (each rule applies ``times`` times, then is used up):

- ``cut_before``: drop the client's connection without forwarding (the gateway never sees it);
- ``cut_after``: forward, read the gateway's full answer, then drop the client's connection
  without a byte of it (the gateway acted; the client never learns how);
- ``hold``: forward, read the answer, set ``answered`` and keep the client waiting until
  ``release`` is set (a test kills the client meanwhile);
- ``delay:SECONDS``: forward, then answer only after a pause (client timeouts);
- ``status:CODE``: answer CODE with a small JSON error without forwarding, as a load balancer
  in front of the gateway would (503, 429).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field


@dataclass
class Rule:
    method: str
    path_prefix: str
    action: str
    times: int = 1


@dataclass
class Proxy:
    upstream_host: str
    upstream_port: int
    rules: list[Rule] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    answered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, method: str, path_prefix: str, action: str, times: int = 1) -> None:
        with self._lock:
            self.rules.append(Rule(method, path_prefix, action, times))

    def start(self) -> Proxy:
        self._thread.start()
        if not self._ready.wait(5):
            raise RuntimeError("the proxy did not start")
        return self

    def stop(self) -> None:
        self.release.set()

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            # Connections still being served (a delayed or held answer) end here, inside the
            # loop, so none is left to be closed after the loop is gone.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._loop.stop()

        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(shutdown()))
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def begin() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(begin())
        self._loop.run_forever()

    def _take(self, method: str, path: str) -> str:
        with self._lock:
            for rule in self.rules:
                if rule.times > 0 and rule.method == method and path.startswith(rule.path_prefix):
                    rule.times -= 1
                    self.log.append(f"{rule.action} {method} {path}")
                    return rule.action
        self.log.append(f"pass {method} {path}")
        return "pass"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_message(reader)
                if request is None:
                    return
                head, body = request
                method, path = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
                action = self._take(method, path)
                if action == "cut_before":
                    writer.transport.abort()
                    return
                if action.startswith("status:"):
                    code = int(action.split(":", 1)[1])
                    payload = b'{"error":{"code":"UPSTREAM","message":"injected by the proxy"}}'
                    writer.write(
                        f"HTTP/1.1 {code} Injected\r\ncontent-type: application/json\r\n"
                        f"retry-after: 0\r\ncontent-length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                    await writer.drain()
                    continue
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
                try:
                    up_writer.write(head + body)
                    await up_writer.drain()
                    answer = await _read_message(up_reader)
                finally:
                    up_writer.close()
                if answer is None:
                    writer.transport.abort()
                    return
                if action == "cut_after":
                    writer.transport.abort()
                    return
                if action == "hold":
                    self.answered.set()
                    await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 60)
                elif action.startswith("delay:"):
                    await asyncio.sleep(float(action.split(":", 1)[1]))
                writer.write(answer[0] + answer[1])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            return
        finally:
            writer.close()


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 message (request or response) framed by Content-Length."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("the test proxy does not handle chunked bodies")
    body = await reader.readexactly(length) if length else b""
    return head, body
