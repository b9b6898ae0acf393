"""API fuzzing of the terminal API with schemathesis, against a real `kessai serve` on SQLite.

Every operation of ``/openapi.json`` is fuzzed: the terminal API's (under /v1) authenticated, with
real payments to find, and the others (health, metrics, provider notifications, sandbox) with a
smaller share (see reliability/fuzzing.py for what is drawn and checked). The default is the short
run for CI: about 400 generated requests. ``KESSAI_FUZZ_REQUESTS=5000`` makes the same test the
long run; ``bench/fuzz.py`` runs it outside pytest and prints the figures. ``KESSAI_FUZZ_SEED``
replays a run's draws (the seed is printed with any failure).

The checks themselves are proved below on answers made up to be wrong, so that a fuzzing run
without failures means the answers were right, not that nothing was looked at.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from schemathesis.specs.openapi.schemas import OpenApiSchema

from e2e.support import KessaiServer, start_server
from kessai.domain.errors import ERROR_CODES
from kessai.domain.fields import json_schema_pattern
from reliability.fuzzing import (
    FUZZ_SETTINGS,
    TERMINAL_OPERATIONS,
    Asked,
    FuzzReport,
    KnownPayment,
    World,
    acceptance_problem,
    check_answer,
    envelope_problems,
    isolation_problem,
    load_schema,
    prepare_world,
    run_fuzz,
)

pytestmark = pytest.mark.e2e

SHORT_RUN = 400
REQUESTS = int(os.environ.get("KESSAI_FUZZ_REQUESTS", str(SHORT_RUN)))
SEED = int(os.environ.get("KESSAI_FUZZ_SEED", str(random.SystemRandom().randrange(2**32))))


@dataclass
class Fuzzed:
    """The gateway under fuzzing and what the fuzzer knows of it."""

    server: KessaiServer
    world: World
    schema: OpenApiSchema


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """A fresh gateway with two merchants, sessions and payments of every kind."""
    server = start_server(tmp_path_factory.mktemp("kessai-fuzz"), FUZZ_SETTINGS)
    try:
        world = prepare_world(server.base_url, server.database_url)
        yield Fuzzed(server, world, load_schema(server.base_url))
    finally:
        server.stop()


@pytest.mark.timeout(max(240, REQUESTS // 5))
def test_every_operation_survives_fuzzing(fuzzed: Fuzzed) -> None:
    """No 5xx, answers as documented, errors in the envelope, on every operation."""
    report = run_fuzz(fuzzed.world, REQUESTS, SEED)
    summary = f"seed {SEED}\n{report.table()}"
    print(summary)  # the figures, shown with -s or on failure
    assert not report.failures, f"{summary}\n\n{report.describe_failures()}"
    assert report.total >= REQUESTS, summary
    assert set(report.operations) >= TERMINAL_OPERATIONS, summary
    assert all(stats.sent for stats in report.operations.values()), summary
    for name in TERMINAL_OPERATIONS:
        # Every operation of the terminal API got its share, in both modes, and its logic was
        # reached: answers past authentication, and at least one success.
        stats = report.operations[name]
        assert stats.sent >= REQUESTS // (len(TERMINAL_OPERATIONS) + 2), (name, summary)
        assert stats.positive and stats.negative, (name, summary)
        # A floor, not an expectation: a fair share of the draws carry no live session.
        assert stats.reached >= max(1, stats.sent // 6), (name, summary)
        assert any(200 <= status < 300 for status in stats.statuses), (name, summary)
    # Payments were found and acted on, not only refused: refunds and voucher numbers succeeded
    # on real payments, and lookups found the payments they named.
    for name in ("CANCEL", "VOUCHERNO", "PAYCHECK", "STATUS", "GET-QR-CODE-png"):
        assert report.operations[name].codes["200"] > 0, (name, summary)
    # The gateway is still up and logged no unexpected exception.
    assert httpx.get(f"{fuzzed.server.base_url}/healthz", timeout=30).status_code == 200
    assert "Traceback" not in Path(fuzzed.server.log).read_text(errors="replace")


def test_description_states_what_the_gateway_checks(fuzzed: Fuzzed) -> None:
    """The formats of kessai.domain.fields, and "no unknown fields", are in /openapi.json."""
    raw = fuzzed.schema.raw_schema
    schemas = raw["components"]["schemas"]
    formats = {
        "LoginBody": {"mid": "mid", "key": "key", "password": "password", "os": "os"},
        "RequestBody": {"transKey": "transKey", "serviceId": "serviceId"},
        "QrBody": {"transKey": "transKey", "serviceId": "serviceId"},
        "RefundBody": {"passCode": "passCode", "refundKey": "refundKey"},
        "VoucherBody": {"voucherNo": "voucherNo"},
    }
    for body, fields in formats.items():
        assert schemas[body]["additionalProperties"] is False, body
        for name, rule in fields.items():
            assert schemas[body]["properties"][name]["pattern"] == json_schema_pattern(rule)
    for body in ("RequestBody", "QrBody"):
        amount = schemas[body]["properties"]["amount"]
        assert (amount["minimum"], amount["maximum"]) == (1, 9_999_999), body
    paycheck = raw["paths"]["/v1/payments/{transId}"]["get"]["parameters"]
    assert paycheck[0]["schema"]["pattern"] == json_schema_pattern("transId")
    status = raw["paths"]["/v1/payments"]["get"]["parameters"]
    assert status[0]["required"] is True
    assert status[0]["schema"] == {
        "type": "string",
        "pattern": json_schema_pattern("transKey"),
        "description": "The terminal's transKey",
    }
    assert schemas["ErrorDetail"]["properties"]["code"]["enum"] == sorted(ERROR_CODES)
    for path, method in (
        ("/v1/login", "post"),
        ("/v1/payments", "post"),
        ("/v1/payments/{transId}/refunds", "post"),
    ):
        assert "415" in raw["paths"][path][method]["responses"], path


# --- the checks fail on wrong answers -------------------------------------------------------------


def _answer(
    status: int, body: object, *, content_type: str = "application/json", **headers: str
) -> schemathesis.Response:
    """An answer as schemathesis sees one, made up for a PAYCHECK request."""
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = requests.Request("GET", "http://127.0.0.1/v1/payments/1234567890").prepare()
    sent = {"content-type": [content_type], "x-request-id": ["abc123"]}
    sent |= {name.replace("_", "-"): [value] for name, value in headers.items()}
    return schemathesis.Response(
        status_code=status, headers=sent, content=content, request=request, elapsed=0.0, verify=True
    )


def _error(
    status: int, code: str, request_id: str = "abc123", **extra: object
) -> schemathesis.Response:
    error = {
        "code": code,
        "message": "m",
        "field": None,
        "retryable": False,
        "requestId": request_id,
        **extra,
    }
    return _answer(status, {"error": error})


def test_envelope_check_accepts_the_documented_shape() -> None:
    answer = _error(404, "PAYMENT_NOT_FOUND")
    assert envelope_problems(404, answer.headers, answer.content) == []
    error = json.loads(_error(429, "PASSCODE_LOCKED").content)
    limited = _answer(429, error, retry_after="3")
    assert envelope_problems(429, limited.headers, limited.content) == []


@pytest.mark.parametrize(
    ("status", "answer", "complaint"),
    [
        (500, _answer(500, "Internal Server Error", content_type="text/plain"), "not JSON"),
        (400, _answer(400, {"detail": "bad"}), "is not {'error'"),
        (404, _error(404, "PAYMENT_NOT_FOUND", extra_key=1), "error keys"),
        (400, _error(400, "NO_SUCH_CODE"), "not in ERROR_CODES"),
        (400, _error(400, "PAYMENT_NOT_FOUND"), "documented as 404"),
        (404, _error(404, "PAYMENT_NOT_FOUND", request_id="other"), "differs from X-Request-Id"),
        (429, _error(429, "LOGIN_LOCKED"), "Retry-After"),
    ],
)
def test_envelope_check_finds_wrong_errors(
    status: int, answer: schemathesis.Response, complaint: str
) -> None:
    problems = envelope_problems(status, answer.headers, answer.content)
    assert any(complaint in problem for problem in problems), problems


def test_acceptance_check_flags_only_format_refusals_of_valid_input() -> None:
    invalid_field = _error(400, "INVALID_FIELD").content
    assert acceptance_problem(True, 400, invalid_field) is not None
    assert acceptance_problem(False, 400, invalid_field) is None  # the input was invalid
    assert acceptance_problem(True, 400, _error(400, "SERVICE_MISMATCH").content) is None
    assert acceptance_problem(True, 404, _error(404, "PAYMENT_NOT_FOUND").content) is None


def test_isolation_check_flags_foreign_and_mismatched_payments() -> None:
    body = _answer(200, {"transId": "1111111111", "transKey": "K1"}).content
    assert isolation_problem(2, 1, 200, body, "1111111111", None) is not None  # foreign
    assert isolation_problem(2, 1, 404, body, "1111111111", None) is None
    assert isolation_problem(1, 1, 200, body, "2222222222", None) is not None  # another one
    assert isolation_problem(1, 1, 200, body, None, "K2") is not None
    assert isolation_problem(1, 1, 200, body, "1111111111", "K1") is None


def test_isolation_check_judges_a_transkey_by_the_payment_answered() -> None:
    # Merchant 2 has a payment under transKey K1; merchant 1 has one of its own under the same key.
    known = {
        "1111111111": KnownPayment("1111111111", "K1", 1, "CUSTOMER_CODE", "COMPLETED"),
        "2222222222": KnownPayment("2222222222", "K1", 2, "CUSTOMER_CODE", "COMPLETED"),
    }
    own = _answer(200, {"transId": "1111111111", "transKey": "K1"}).content
    foreign = _answer(200, {"transId": "2222222222", "transKey": "K1"}).content
    assert isolation_problem(None, 1, 200, own, None, "K1", known) is None
    problem = isolation_problem(None, 1, 200, foreign, None, "K1", known)
    assert problem is not None and "2222222222 of merchant 2" in problem
    # A payment the run never saw answered is the actor's own as far as the run can tell.
    unseen = _answer(200, {"transId": "3333333333", "transKey": "K1"}).content
    assert isolation_problem(None, 1, 200, unseen, None, "K1", known) is None


def _paycheck_case(schema: OpenApiSchema) -> schemathesis.Case:
    operation = schema["/v1/payments/{transId}"]["GET"]
    return operation.Case(
        path_parameters={"transId": "1234567890"}, headers={"Authorization": "Bearer x"}
    )


def _found(report: FuzzReport) -> str:
    return "\n".join(f"{f.check}: {f.summary}" for f in report.failures)


def test_session_check_flags_a_live_session_refused(fuzzed: Fuzzed) -> None:
    report = FuzzReport(seed=0)
    asked = Asked(actor=fuzzed.world.own)
    check_answer(
        report, "PAYCHECK", _paycheck_case(fuzzed.schema), _error(401, "SESSION_INVALID"), asked
    )
    assert "live session" in _found(report), _found(report)
    report = FuzzReport(seed=0)
    check_answer(
        report, "PAYCHECK", _paycheck_case(fuzzed.schema), _error(401, "SESSION_INVALID"), Asked()
    )  # sent without one: as it should be
    assert "live session" not in _found(report), _found(report)


def test_schema_checks_find_a_server_error(fuzzed: Fuzzed) -> None:
    report = FuzzReport(seed=0)
    answer = _answer(500, "boom", content_type="text/plain")
    check_answer(report, "PAYCHECK", _paycheck_case(fuzzed.schema), answer, Asked())
    found = _found(report)
    assert "Server error" in found, found
    assert "error envelope" in found, found


def test_schema_checks_find_an_undocumented_answer(fuzzed: Fuzzed) -> None:
    report = FuzzReport(seed=0)
    # A payment without most of its fields, and a status the operation does not document.
    check_answer(
        report,
        "PAYCHECK",
        _paycheck_case(fuzzed.schema),
        _answer(200, {"transId": "1234567890"}),
        Asked(),
    )
    check_answer(
        report, "PAYCHECK", _paycheck_case(fuzzed.schema), _error(418, "PAYMENT_NOT_FOUND"), Asked()
    )
    found = _found(report)
    assert "Response violates schema" in found, found
    assert "Undocumented status code" in found, found
