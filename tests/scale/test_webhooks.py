"""Webhooks: signed, retried with backoff, delivered exactly once accepted, never lost."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from e2e.support import Cli as BaseCli
from e2e.support import Pos, Provisioner, base_env, new_key
from kessai import webhooks

from .support import migrate, serve, worker

pytestmark = pytest.mark.e2e

MASTER_KEY = {"KESSAI_SECRET_KEY": "5e" * 32}
WORKER = MASTER_KEY | {
    "KESSAI_WORKER_IDLE_SLEEP_MS": "100",
    "KESSAI_WEBHOOK_FIRST_RETRY_SECONDS": "0.3",
}


class Cli(BaseCli):
    """The CLI with the master key in its environment (webhook secrets derive from it)."""

    def _start(self, args: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._command(args),
            env=base_env() | MASTER_KEY,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


class Receiver:
    """A merchant's webhook endpoint on 127.0.0.1 that fails its first ``failures`` deliveries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        self.accepted: dict[str, dict[str, Any]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    webhooks.verify(receiver.secret, self.headers[webhooks.SIGNATURE_HEADER], body)
                    verified = "ok"
                except webhooks.SignatureError as exc:
                    verified = exc.part
                event_id = self.headers[webhooks.EVENT_ID_HEADER]
                status = 500 if len(receiver.received) < receiver.failures else 200
                receiver.received.append({"id": event_id, "verified": verified, "status": status})
                if status == 200 and verified == "ok":
                    receiver.accepted.setdefault(event_id, json.loads(body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/kessai"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver(failures=2)
    try:
        yield made
    finally:
        made.close()


def _wait(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_event_is_retried_then_accepted_exactly_once_and_survives_a_restart(
    backend: str, tmp_path: Path, database_url: Callable[[str], str], receiver: Receiver
) -> None:
    url = database_url(backend)
    migrate(url)
    cli = Cli(url)
    terminal = Provisioner(cli, ahead=0).make()
    endpoint = cli.json(
        "admin", "webhook", "set", "--merchant", str(terminal.merchant_id), "--url", receiver.url
    )
    receiver.secret = endpoint["secret"]
    assert receiver.secret.startswith("whsec_")

    # The payment is made while no worker runs; then the gateway is killed.
    server = serve(tmp_path, url, MASTER_KEY)
    pos = Pos(httpx.Client(base_url=server.base_url, timeout=30), terminal)
    pos.login_ok()
    code = pos.http.post("/sandbox/codes", json={"serviceId": "01"}).json()["codes"][0]
    paid = pos.pay(code, amount=1234, trans_key=new_key())
    server.kill()
    assert receiver.received == []

    # A worker started afterwards delivers it, retrying (0.3 s, then 0.6 s) past two failures.
    running = worker(tmp_path, url, WORKER)
    try:
        _wait(lambda: len(receiver.accepted) == 1)
        time.sleep(1.0)  # long enough for a further, wrong, delivery to show up
    finally:
        running.stop()
    event_id = next(iter(receiver.accepted))

    assert [r["status"] for r in receiver.received] == [500, 500, 200]
    assert {r["verified"] for r in receiver.received} == {"ok"}
    assert {r["id"] for r in receiver.received} == {event_id}
    event = receiver.accepted[event_id]
    assert event["type"] == "payment.completed"
    assert event["data"]["payment"]["transId"] == paid["transId"]
    assert event["data"]["payment"]["amount"] == 1234
    listed = cli.json("admin", "webhook", "events", "--merchant", str(terminal.merchant_id))
    assert len(listed) == 1
    assert listed[0]["status"] == "DELIVERED"
    assert [a["statusCode"] for a in listed[0]["attempts"]] == [500, 500, 200]

    # An operator can send it again (receivers de-duplicate by event id).
    cli.json("admin", "webhook", "resend", event_id)
    again = worker(tmp_path, url, WORKER)
    try:
        _wait(lambda: len(receiver.received) == 4)
    finally:
        again.stop()
    assert receiver.received[-1] == {"id": event_id, "verified": "ok", "status": 200}
    assert list(receiver.accepted) == [event_id]


def test_signature_verification_names_the_part_that_failed() -> None:
    body = b'{"id":"evt_1"}'
    header = webhooks.sign("whsec_right", body, int(time.time()))
    assert webhooks.verify("whsec_right", header, body) > 0
    with pytest.raises(webhooks.SignatureError) as wrong_secret:
        webhooks.verify("whsec_wrong", header, body)
    assert wrong_secret.value.part == "secret"
    with pytest.raises(webhooks.SignatureError) as changed:
        webhooks.verify("whsec_right", header, b'{"id": "evt_1"}')
    assert changed.value.part == "body"
    old = webhooks.sign("whsec_right", body, int(time.time()) - 3600)
    with pytest.raises(webhooks.SignatureError) as replay:
        webhooks.verify("whsec_right", old, body)
    assert replay.value.part == "clock"
    with pytest.raises(webhooks.SignatureError) as garbage:
        webhooks.verify("whsec_right", "nonsense", body)
    assert garbage.value.part == "header"
