"""The express lane answers as the framework's handlers do, and steps aside otherwise."""

from __future__ import annotations

import gc
import json
import logging
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import seed_terminal
from litestar.testing import TestClient

from kessai.api import express
from kessai.api.app import app_from_env, freeze_startup_objects, serving_app
from kessai.config import Settings
from kessai.service.gateway import Gateway

# Headers that differ between any two answers, whoever serves them.
_VOLATILE = {"x-request-id", "date"}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any], list[str]]]:
    url = f"sqlite:///{tmp_path / 'kessai.db'}"
    login, codes = seed_terminal(url, "Express Shop", 4)
    yield url, login, codes


@pytest.fixture
def client(setup: tuple[str, dict[str, Any], list[str]]) -> Iterator[TestClient[Any]]:
    url, _, _ = setup
    with TestClient(serving_app(url, Settings(sandbox_enabled=True))) as test_client:
        yield test_client


def _login(client: TestClient[Any], login: dict[str, Any]) -> dict[str, str]:
    answer = client.post("/v1/login", json={**login, "key": "AA:BB:CC:00:11:22"})
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['sessionToken']}"}


def _shape(answer: httpx.Response) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in answer.headers.items() if k not in _VOLATILE}
    body = answer.json()
    if isinstance(body.get("error"), dict):
        body["error"].pop("requestId", None)
    return answer.status_code, headers, body


def _both(
    client: TestClient[Any], monkeypatch: pytest.MonkeyPatch, call: Any
) -> tuple[tuple[int, dict[str, str], Any], tuple[int, dict[str, str], Any]]:
    """The same call served by the express lane, then by the framework's handler."""
    fast = _shape(call())
    with monkeypatch.context() as patch:
        patch.setattr(express, "OPERATIONS", {})
        slow = _shape(call())
    return fast, slow


def test_reads_and_replays_are_identical(
    client: TestClient[Any],
    setup: tuple[str, dict[str, Any], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, login, codes = setup
    served: list[str] = []

    def counting(name: str, serve: Any) -> Any:
        async def wrapper(*args: Any) -> Any:
            view = await serve(*args)
            served.append(name if view is not None else f"{name}: declined")
            return view

        return wrapper

    monkeypatch.setattr(
        express,
        "OPERATIONS",
        {name: counting(name, fn) for name, fn in express.OPERATIONS.items()},
    )
    auth = _login(client, login)
    body = {"transKey": "EXPRESS1", "amount": 1200, "code": codes[0]}
    first = client.post("/v1/payments", json=body, headers=auth)
    assert first.status_code == 200 and first.json()["status"] == "COMPLETED"
    assert "idempotent-replayed" not in first.headers
    trans_id = first.json()["transId"]

    replay = lambda: client.post("/v1/payments", json=body, headers=auth)  # noqa: E731
    fast, slow = _both(client, monkeypatch, replay)
    assert fast == slow and fast[1]["idempotent-replayed"] == "true"

    for path in (f"/v1/payments/{trans_id}", "/v1/payments?transKey=EXPRESS1"):
        fast, slow = _both(client, monkeypatch, lambda p=path: client.get(p, headers=auth))
        assert fast == slow and fast[0] == 200 and fast[2]["transId"] == trans_id
    # The express lane really served the first answer of each pair.
    assert served == ["REQUEST", "REQUEST", "PAYCHECK", "STATUS"]


@pytest.mark.parametrize(
    ("method", "path", "body", "extra"),
    [
        ("GET", "/v1/payments/1234567890", None, {}),  # unknown transId: the gateway's 404
        ("GET", "/v1/payments/12345", None, {}),  # not ten digits: the handler's validation
        ("GET", "/v1/payments?transKey=NOPE", None, {}),
        ("GET", "/v1/payments?transKey=A&transKey=B", None, {}),
        ("GET", "/v1/payments?transKey=A&transKey=A", None, {}),
        ("GET", "/v1/payments?transKey=A&foo=1", None, {}),
        ("GET", "/v1/payments?foo", None, {}),
        ("GET", "/v1/payments", None, {}),
        (
            "POST",
            "/v1/payments",
            b'{"transKey": "E2", "amount": 100, "amount": 9, "code": "1"}',
            {},
        ),
        (
            "POST",
            "/v1/payments",
            b'{"transKey": "E2", "\\u0061mount": 1, "amount": 9, "code": "1"}',
            {},
        ),
        ("POST", "/v1/payments", b'{"transKey": "\xff", "amount": 100, "code": "1"}', {}),
        ("POST", "/v1/payments", b'{"transKey": "E2", "amount": "100", "code": "x"}', {}),
        ("POST", "/v1/payments", b'{"transKey": "E2", "amount": 100', {}),
        ("POST", "/v1/payments", b'{"transKey": "E2", "amount": 100, "code": "1"}', {}),
        ("POST", "/v1/payments", b"[]", {}),
        ("POST", "/v1/payments", b"transKey=E2", {"content-type": "text/plain"}),
        ("POST", "/v1/payments", b"{" * 5000, {}),
        ("POST", "/v1/payments", b'{"transKey": "' + b"E" * 20_000 + b'"}', {}),
        ("GET", "/v1/payments/1234567890", None, {"authorization": "Bearer not-a-token"}),
        ("GET", "/v1/payments/1234567890", None, {"authorization": ""}),
    ],
)
def test_errors_are_identical(
    client: TestClient[Any],
    setup: tuple[str, dict[str, Any], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    body: bytes | None,
    extra: dict[str, str],
) -> None:
    _, login, _ = setup
    headers = _login(client, login) | {"content-type": "application/json"} | extra
    call = lambda: client.request(method, path, content=body, headers=headers)  # noqa: E731
    fast, slow = _both(client, monkeypatch, call)
    assert fast == slow
    assert 400 <= fast[0] < 500 and set(fast[2]) == {"error"}


def test_a_failed_request_stores_nothing(
    client: TestClient[Any], setup: tuple[str, dict[str, Any], list[str]]
) -> None:
    _, login, codes = setup
    auth = _login(client, login)
    bad = client.post(
        "/v1/payments",
        content=json.dumps({"transKey": "E3", "amount": 0, "code": codes[1]}),
        headers=auth | {"content-type": "application/json"},
    )
    assert bad.status_code == 400
    missing = client.get("/v1/payments?transKey=E3", headers=auth)
    assert missing.status_code == 404


def test_a_bug_is_answered_as_the_framework_answers_it(
    client: TestClient[Any],
    setup: tuple[str, dict[str, Any], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, login, _ = setup
    auth = _login(client, login)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Gateway, "paycheck", broken)
    answers = []
    for served_here in (True, False):
        with monkeypatch.context() as patch:
            if not served_here:
                patch.setattr(express, "OPERATIONS", {})
            answer = client.get("/v1/payments/1234567890", headers=auth)
        rid = answer.headers["x-request-id"]
        error = answer.json()["error"]
        assert error["requestId"] == rid and rid in error["message"]
        answers.append(_shape(answer))
    fast, slow = answers
    fast[2]["error"]["message"] = slow[2]["error"]["message"] = "internal error"
    assert fast == slow
    assert fast[0] == 500 and fast[2]["error"]["code"] == "INTERNAL_ERROR"
    assert fast[2]["error"]["retryable"] is True


@pytest.fixture
def thawed() -> Iterator[None]:
    """Whatever a test freezes is handed back to the collector afterwards."""
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("thawed")
def test_a_serving_process_leaves_startups_objects_out_of_later_collections(
    setup: tuple[str, dict[str, Any], list[str]],
) -> None:
    url, login, codes = setup
    app = serving_app(url, Settings(sandbox_enabled=True), freeze_at_startup=True)
    assert gc.get_freeze_count() == 0
    with TestClient(app) as served:
        # The app's modules, routes and gateway, at least: tens of thousands of objects.
        assert gc.get_freeze_count() > 10_000
        # Objects made after startup are still collected: a cycle made now is freed.
        watcher = weakref.ref(_Cyclic([]))
        gc.collect()
        assert watcher() is None
        headers = _login(served, login)
        paid = served.post(
            "/v1/payments",
            json={"transKey": "FROZEN1", "amount": 100, "code": codes[0]},
            headers=headers,
        )
        assert paid.status_code == 200, paid.text
        assert paid.json()["status"] == "COMPLETED"


@pytest.mark.usefixtures("thawed")
def test_tests_and_embedded_apps_freeze_nothing(
    setup: tuple[str, dict[str, Any], list[str]],
) -> None:
    url, _, _ = setup
    with TestClient(serving_app(url, Settings(sandbox_enabled=True))) as served:
        assert served.get("/healthz").status_code == 200
        assert gc.get_freeze_count() == 0


def test_kessai_serve_builds_a_freezing_app(
    setup: tuple[str, dict[str, Any], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, _ = setup
    monkeypatch.setenv("KESSAI_DATABASE_URL", url)
    served = app_from_env()
    assert isinstance(served, express.Front)
    assert freeze_startup_objects in served.app.on_startup
    # httpx would log each webhook delivery's whole URL, query token and all, at INFO.
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


class _Cyclic:
    """An object in a reference cycle, which only the cyclic collector can free."""

    def __init__(self, ring: list[Any]) -> None:
        self.ring = ring
        ring.append(self)
