"""What operators rely on: /healthz, /metrics, /openapi.json, /docs and `kessai demo`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .support import (
    KESSAI,
    assert_error,
    base_env,
    free_port,
    stop_process,
    wait_healthy,
)

pytestmark = pytest.mark.e2e

# The guide's nine operations: (method, path) → operationId.
GUIDE_OPERATIONS = {
    ("post", "/v1/login"): "LOGIN",
    ("post", "/v1/logout"): "LOGOUT",
    ("post", "/v1/payments"): "REQUEST",
    ("get", "/v1/payments/{transId}"): "PAYCHECK",
    ("get", "/v1/payments"): "STATUS",
    ("post", "/v1/payments/{transId}/refunds"): "CANCEL",
    ("put", "/v1/payments/{transId}/voucher"): "VOUCHERNO",
    ("post", "/v1/qr-codes"): "GET-QR-CODE",
    ("post", "/v1/identify"): "IDENTIFY-SCANNED-QR-CODE",
}


def test_healthz(http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up"}
    assert response.headers.get("x-request-id")


def test_metrics_count_requests_by_operation(http: httpx.Client) -> None:
    # A LOGIN with an unknown os, so that the counter has a sample we know about.
    login = {"mid": "1" * 16, "key": "K1", "password": "A" * 12, "os": "000000"}
    assert_error(http.post("/v1/login", json=login), 401, "UNKNOWN_OS")
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE kessai_http_requests_total counter" in text
    sample = re.search(
        r'^kessai_http_requests_total\{operation="LOGIN",status="401"\} (\d+(?:\.\d+)?)$',
        text,
        re.MULTILINE,
    )
    assert sample is not None, text[:2000]
    assert float(sample.group(1)) >= 1
    assert "kessai_http_request_duration_seconds" in text


def test_metrics_content_type_is_a_valid_media_type(http: httpx.Client) -> None:
    content_type = http.get("/metrics").headers["content-type"]
    names = [part.split("=")[0].strip().lower() for part in content_type.split(";")[1:]]
    assert len(names) == len(set(names)), content_type


def test_openapi_names_the_guide_operations(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert spec["openapi"].startswith("3.")
    found = {
        (method, path): operation.get("operationId")
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    for where, operation_id in GUIDE_OPERATIONS.items():
        assert found.get(where) == operation_id, (where, found)
    assert set(GUIDE_OPERATIONS.values()) <= set(found.values())


def test_docs_page(http: httpx.Client) -> None:
    response = http.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


# --- kessai demo ----------------------------------------------------------------------------------


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`kessai demo` on a free port: answers its base URL and what it printed."""
    port = free_port()
    out, err = tmp_path / "demo.out", tmp_path / "demo.err"
    env = base_env() | {"TMPDIR": str(tmp_path)}  # its fresh database goes under tmp_path
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [KESSAI, "demo", "--port", str(port)], env=env, stdout=stdout, stderr=stderr
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, err)
        yield base, out.read_text()
    finally:
        stop_process(process)


def _printed_bodies(text: str) -> list[dict[str, Any]]:
    """The JSON bodies of the printed curl commands (`-d '{…}'`)."""
    return [json.loads(body) for body in re.findall(r"-d '(\{[^']*\})'", text)]


def test_demo_prints_credentials_and_urls_that_work(demo: tuple[str, str]) -> None:
    base, printed = demo
    mid = re.search(r"\bmid\s+(\d{16})\b", printed)
    password = re.search(r"\bpassword\s+([A-Za-z0-9]{12})\b", printed)
    pass_code = re.search(r"\bpassCode\s+(\d{4})\b", printed)
    os_value = re.search(r"\bos\s+(\d{6})\b", printed)
    assert mid and password and pass_code and os_value, printed
    for path in ("/v1", "/docs", "/openapi.json", "/healthz", "/metrics"):
        assert f"{base}{path}" in printed, (path, printed)
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        assert http.get("/openapi.json").status_code == 200
        # The printed LOGIN works with the printed credentials.
        bodies = _printed_bodies(printed)
        login = next(b for b in bodies if "mid" in b)
        assert login["mid"] == mid.group(1)
        assert login["password"] == password.group(1)
        assert login["os"] == os_value.group(1)
        answer = http.post("/v1/login", json=login)
        assert answer.status_code == 200, answer.text
        auth = {"Authorization": f"Bearer {answer.json()['sessionToken']}"}
        # The printed payment with a sandbox code that succeeds.
        first = next(b for b in bodies if b.get("transKey") == "DEMO0001")
        paid = http.post("/v1/payments", json=first, headers=auth)
        assert paid.status_code == 200, paid.text
        assert paid.json()["status"] == "COMPLETED"
        assert paid.json()["amount"] == first["amount"]
        # The printed IDENTIFY.
        identify = next(b for b in bodies if set(b) == {"code"})
        assert http.post("/v1/identify", json=identify, headers=auth).json()["serviceId"] == "01"
        # The printed refunds, with the printed passCode: a partial one, then the rest.
        refunds = [b for b in bodies if "passCode" in b]
        assert refunds
        assert {r["passCode"] for r in refunds} == {pass_code.group(1)}
        trans_id = paid.json()["transId"]
        statuses = []
        for refund in refunds:
            done = http.post(f"/v1/payments/{trans_id}/refunds", json=refund, headers=auth)
            assert done.status_code == 200, done.text
            statuses.append(done.json()["status"])
        assert statuses[-1] == "REFUNDED"
        assert http.post("/v1/logout", headers=auth).status_code == 200
    # The printed `kessai sandbox code` works in another shell with the printed export: the
    # database's key for customer codes is sealed with the demo's master key.
    export = re.search(r"export KESSAI_SECRET_KEY_FILE=(\S+)", printed)
    more = re.search(r"More sandbox codes:\s+(.+)", printed)
    assert export and more, printed
    command = shlex.split(more.group(1))
    env = base_env() | {"KESSAI_SECRET_KEY_FILE": export.group(1)}
    issued = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.strip()
    refused = subprocess.run(
        command, env=base_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode != 0
    assert "sealed with the master key" in refused.stdout + refused.stderr
