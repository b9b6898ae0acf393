"""Every error the API names, in its one shape, and that a refused request changes nothing.

"Nothing changed" is checked two ways: STATUS of the transKey answers PAYMENT_NOT_FOUND, and the
customer code sent with the bad requests still pays afterwards (so the wallet never saw it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .support import (
    ENDED_SERVICE,
    PRODUCT_BARCODE,
    Pos,
    assert_error,
    assert_not_found,
    new_key,
    sandbox_code,
    unchanged,
)

pytestmark = pytest.mark.e2e


def _still_pays(pos: Pos, code: str) -> None:
    """The code the refused requests carried was never charged: it pays now."""
    assert pos.pay(code)["status"] == "COMPLETED"


def _request_body(customer_code: str, /, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"transKey": new_key(), "amount": 1000, "code": customer_code}
    body.update(changes)
    return body


def _post(pos: Pos, path: str, body: dict[str, Any]) -> httpx.Response:
    return pos.http.post(path, json=body, headers=pos.auth())


MALFORMED = [
    "not json",
    '{"transKey": "A1",}',
    '{"a": 1} trailing',
    "[]",
    '"a string"',
    "null",
    "42",
    b"\xff\xfe\x00",
]


def test_malformed_json_is_refused(pos: Pos, subtests: pytest.Subtests) -> None:
    code = sandbox_code(pos.http, "01")
    for path in ("/v1/payments", "/v1/login", "/v1/qr-codes", "/v1/identify"):
        for body in MALFORMED:
            with subtests.test(path=path, body=repr(body)):
                error = assert_error(pos.raw("POST", path, body), 400, "MALFORMED_JSON")
                assert error["retryable"] is False
    _still_pays(pos, code)


def test_truncated_json_is_malformed(pos: Pos) -> None:
    for body in ("{", '{"transKey":', '{"transKey": "A1", "amount": 1'):
        assert_error(pos.raw("POST", "/v1/payments", body), 400, "MALFORMED_JSON")


def test_an_empty_body_is_malformed(pos: Pos) -> None:
    assert_error(pos.raw("POST", "/v1/payments", b""), 400, "MALFORMED_JSON")


def test_a_repeated_key_is_refused_and_changes_nothing(pos: Pos, subtests: pytest.Subtests) -> None:
    code = sandbox_code(pos.http, "01")
    for template, key in (
        ('{"transKey":"%s","amount":100,"amount":5000,"code":"%s"}', "amount"),
        ('{"transKey":"%s","\\u0061mount":100,"amount":5000,"code":"%s"}', "amount"),
        ('{"transKey":"%s","amount":100,"code":"%s","code":"1"}', "code"),
    ):
        trans_key = new_key()
        with subtests.test(body=template):
            sent = pos.raw("POST", "/v1/payments", template % (trans_key, code))
            error = assert_error(sent, 400, "MALFORMED_JSON", key)
            assert key in error["message"]
            assert_not_found(pos, trans_key)
    paid = pos.pay(code, 100)
    assert (paid["status"], paid["amount"]) == ("COMPLETED", 100)
    before = pos.paycheck(paid["transId"]).json()
    refunds = f"/v1/payments/{paid['transId']}/refunds"
    body = f'{{"passCode":"{pos.terminal.pass_code}","amount":10,"amount":100}}'
    assert_error(pos.raw("POST", refunds, body), 400, "MALFORMED_JSON", "amount")
    unchanged(before, pos.paycheck(paid["transId"]).json())
    login = pos.login_body()
    wrong_first = '{"password":"' + "x" * 12 + '",' + json.dumps(login)[1:]
    sent = pos.http.post(
        "/v1/login", content=wrong_first, headers={"content-type": "application/json"}
    )
    assert_error(sent, 400, "MALFORMED_JSON", "password")


def test_a_body_that_is_not_utf8_is_malformed(pos: Pos, subtests: pytest.Subtests) -> None:
    for path in ("/v1/login", "/v1/payments", "/v1/qr-codes", "/v1/identify"):
        with subtests.test(path=path):
            sent = pos.raw("POST", path, b'{"transKey":"\xff","mid":"\xff","code":"\xff"}')
            error = assert_error(sent, 400, "MALFORMED_JSON", None)
            assert "UTF-8" in error["message"]


def test_wrong_types_are_refused_with_the_field(pos: Pos, subtests: pytest.Subtests) -> None:
    code = sandbox_code(pos.http, "01")
    cases: list[tuple[str, Any]] = [
        ("amount", "100"),
        ("amount", 100.0),
        ("amount", 100.5),
        ("amount", True),
        ("amount", None),
        ("amount", [100]),
        ("transKey", 12345),
        ("code", 900081818800000000000000),
        ("serviceId", 1),
    ]
    for field, value in cases:
        with subtests.test(field=field, value=repr(value)):
            body = _request_body(code, **{field: value})
            error = assert_error(_post(pos, "/v1/payments", body), 400, "INVALID_FIELD", field)
            assert field in error["message"]
            if isinstance(body["transKey"], str):
                assert_not_found(pos, body["transKey"])
    login_cases: list[tuple[str, Any]] = [
        ("mid", int(pos.terminal.mid)),
        ("os", int(pos.terminal.os)),
        ("password", None),
        ("key", 5),
    ]
    for field, value in login_cases:
        with subtests.test(operation="LOGIN", field=field):
            response = pos.http.post("/v1/login", json=pos.login_body(**{field: value}))
            assert_error(response, 400, "INVALID_FIELD", field)
    _still_pays(pos, code)


def test_unknown_and_missing_fields(pos: Pos, subtests: pytest.Subtests) -> None:
    code = sandbox_code(pos.http, "01")
    with subtests.test("unknown field"):
        body = _request_body(code, amout=1000)
        assert_error(_post(pos, "/v1/payments", body), 400, "UNKNOWN_FIELD", "amout")
        assert_not_found(pos, body["transKey"])
    for field in ("transKey", "amount", "code"):
        with subtests.test("missing field", field=field):
            body = _request_body(code)
            trans_key = body["transKey"]
            del body[field]
            assert_error(_post(pos, "/v1/payments", body), 400, "INVALID_FIELD", field)
            assert_not_found(pos, trans_key)
    for field in ("mid", "key", "password", "os"):
        with subtests.test("missing LOGIN field", field=field):
            body = pos.login_body()
            del body[field]
            assert_error(pos.http.post("/v1/login", json=body), 400, "INVALID_FIELD", field)
    with subtests.test("unknown LOGIN field"):
        body = pos.login_body(terminalName="x")
        assert_error(pos.http.post("/v1/login", json=body), 400, "UNKNOWN_FIELD", "terminalName")
    _still_pays(pos, code)


def test_transkey_format(pos: Pos, subtests: pytest.Subtests) -> None:
    code = sandbox_code(pos.http, "01")
    for trans_key in ("A" * 35, "ab-c", "ab_c", "a b", "", "ＡＢ１", "鍵"):
        with subtests.test(transKey=trans_key):
            body = _request_body(code, transKey=trans_key)
            assert_error(_post(pos, "/v1/payments", body), 400, "INVALID_FIELD", "transKey")
            qr = {"transKey": trans_key, "amount": 100, "serviceId": "01"}
            assert_error(_post(pos, "/v1/qr-codes", qr), 400, "INVALID_FIELD", "transKey")
    # 34 alphanumerics is the longest transKey, and it works.
    longest = "Z" + new_key()[1:34].ljust(33, "0")
    assert len(longest) == 34
    assert pos.pay(code, trans_key=longest)["transKey"] == longest


def test_amount_bounds(pos: Pos, subtests: pytest.Subtests) -> None:
    code = sandbox_code(pos.http, "01")
    for amount in (0, -1, 10_000_000, 10**30):
        with subtests.test(amount=amount):
            body = _request_body(code, amount=amount)
            error = assert_error(_post(pos, "/v1/payments", body), 400, "INVALID_FIELD", "amount")
            assert error["retryable"] is False
            assert_not_found(pos, body["transKey"])
            qr = {"transKey": body["transKey"], "amount": amount, "serviceId": "01"}
            assert_error(_post(pos, "/v1/qr-codes", qr), 400, "INVALID_FIELD", "amount")
            assert_not_found(pos, body["transKey"])
    _still_pays(pos, code)


def _chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


def test_an_oversized_body_is_refused(pos: Pos) -> None:
    code = sandbox_code(pos.http, "01")
    trans_key = new_key()
    body = json.dumps(_request_body(code, transKey=trans_key) | {"pad": "x" * 17_000}).encode()
    assert len(body) > 16 * 1024
    assert_error(pos.raw("POST", "/v1/payments", body), 413, "BODY_TOO_LARGE")
    # Without a Content-Length (chunked), too.
    chunked = pos.http.post(
        "/v1/payments",
        content=_chunks(body),
        headers={"content-type": "application/json", **pos.auth()},
    )
    assert_error(chunked, 413, "BODY_TOO_LARGE")
    login = json.dumps(pos.login_body(key="K" * 20_000)).encode()
    assert_error(pos.raw("POST", "/v1/login", login), 413, "BODY_TOO_LARGE")
    assert_not_found(pos, trans_key)
    _still_pays(pos, code)


def test_unknown_routes_answer_not_found_in_the_envelope(http: httpx.Client) -> None:
    for method, path in (("GET", "/v1/nope"), ("POST", "/v1/paymentz"), ("GET", "/nope")):
        assert_error(http.request(method, path), 404, "NOT_FOUND")
    assert_error(http.delete("/v1/payments/1000000000"), 405, "METHOD_NOT_ALLOWED")


def test_calls_without_a_valid_session(pos: Pos, subtests: pytest.Subtests) -> None:
    payment = pos.pay(sandbox_code(pos.http, "01"))
    trans_id = payment["transId"]
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/logout", None),
        ("POST", "/v1/payments", _request_body(sandbox_code(pos.http, "01"))),
        ("GET", f"/v1/payments/{trans_id}", None),
        ("GET", f"/v1/payments?transKey={payment['transKey']}", None),
        ("POST", f"/v1/payments/{trans_id}/refunds", {"passCode": pos.terminal.pass_code}),
        ("PUT", f"/v1/payments/{trans_id}/voucher", {"voucherNo": "V1"}),
        ("POST", "/v1/qr-codes", {"transKey": new_key(), "amount": 100, "serviceId": "01"}),
        ("POST", "/v1/identify", {"code": PRODUCT_BARCODE}),
        ("GET", f"/v1/payments/{trans_id}/qr.png", None),
    ]
    headers_and_codes = [
        ({}, "SESSION_REQUIRED"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "SESSION_REQUIRED"),
        ({"Authorization": "Bearer"}, "SESSION_REQUIRED"),
        ({"Authorization": "Bearer not-a-token"}, "SESSION_INVALID"),
        ({"Authorization": f"Bearer {pos.token}x"}, "SESSION_INVALID"),
    ]
    for method, path, body in calls:
        for headers, code in headers_and_codes:
            with subtests.test(method=method, path=path, code=code):
                response = pos.http.request(method, path, json=body, headers=headers)
                assert_error(response, 401, code)
    # None of that touched the payment or the session.
    assert pos.paycheck(trans_id).json() == payment


def test_login_errors(pos: Pos, http: httpx.Client) -> None:
    assert_error(http.post("/v1/login", json=pos.login_body(os="999999")), 401, "UNKNOWN_OS", "os")
    wrong = assert_error(
        http.post("/v1/login", json=pos.login_body(password="WrongPass123")),
        401,
        "WRONG_CREDENTIALS",
    )
    unknown_mid = "9" * 16 if pos.terminal.mid != "9" * 16 else "8" * 16
    ghost = assert_error(
        http.post("/v1/login", json=pos.login_body(mid=unknown_mid)), 401, "WRONG_CREDENTIALS"
    )
    # An unknown mid is answered exactly like a wrong password: nothing tells them apart.
    del wrong["requestId"], ghost["requestId"]
    assert ghost == wrong
    for field, value in (("mid", "123"), ("os", "12"), ("password", "short"), ("key", "a b")):
        response = http.post("/v1/login", json=pos.login_body(**{field: value}))
        assert_error(response, 400, "INVALID_FIELD", field)
    # The failures above did not disturb the live session.
    assert pos.paycheck("1000000000").status_code == 404


def test_service_errors(pos: Pos, subtests: pytest.Subtests) -> None:
    paypay = sandbox_code(pos.http, "01")
    line_pay = sandbox_code(pos.http, ENDED_SERVICE)
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        (_request_body(paypay, serviceId="21"), 400, "SERVICE_MISMATCH", "serviceId"),
        (_request_body(paypay, serviceId="99"), 400, "UNKNOWN_SERVICE", "serviceId"),
        (_request_body(paypay, serviceId="1"), 400, "INVALID_FIELD", "serviceId"),
        # The code named the ended service: the error points at the code.
        (_request_body(line_pay), 422, "SERVICE_NOT_SUPPORTED", "code"),
        (
            _request_body(line_pay, serviceId=ENDED_SERVICE),
            422,
            "SERVICE_NOT_SUPPORTED",
            "serviceId",
        ),
        (_request_body(PRODUCT_BARCODE), 422, "NOT_A_PAYMENT_CODE", "code"),
        (_request_body("12345"), 422, "NOT_A_PAYMENT_CODE", "code"),
        (_request_body(""), 400, "INVALID_FIELD", "code"),
        (_request_body("9000 8181"), 400, "INVALID_FIELD", "code"),
    ]
    for body, status, code, field in cases:
        with subtests.test(code=code, body=body):
            assert_error(_post(pos, "/v1/payments", body), status, code, field)
            assert_not_found(pos, body["transKey"])
    qr_cases: list[tuple[str, int, str]] = [
        ("99", 400, "UNKNOWN_SERVICE"),
        (ENDED_SERVICE, 422, "SERVICE_NOT_SUPPORTED"),
    ]
    for service_id, status, code in qr_cases:
        with subtests.test(operation="GET-QR-CODE", serviceId=service_id):
            trans_key = new_key()
            assert_error(pos.qr(trans_key, 100, service_id), status, code, "serviceId")
            assert_not_found(pos, trans_key)
    # The serviceId that matches the code is accepted.
    matching = pos.request(new_key(), 1000, paypay, service_id="01")
    assert matching.status_code == 200
    assert matching.json()["status"] == "COMPLETED"


def test_same_transkey_with_other_parameters_conflicts(pos: Pos) -> None:
    code = sandbox_code(pos.http, "01")
    trans_key = new_key()
    original = pos.pay(code, 1000, trans_key)
    other_code = sandbox_code(pos.http, "01")
    for amount, sent in ((1001, code), (1000, other_code)):
        error = assert_error(
            pos.request(trans_key, amount, sent), 409, "IDEMPOTENCY_CONFLICT", "transKey"
        )
        assert trans_key in error["message"]
    assert_error(pos.qr(trans_key, 1000, "01"), 409, "IDEMPOTENCY_CONFLICT", "transKey")
    assert pos.status(trans_key).json() == original
    _still_pays(pos, other_code)


def test_status_query_errors_name_the_transkey_field(pos: Pos) -> None:
    missing = pos.http.get("/v1/payments", headers=pos.auth())
    assert_error(missing, 400, "INVALID_FIELD", "transKey")
    too_long = pos.http.get("/v1/payments", params={"transKey": "A" * 70}, headers=pos.auth())
    error = assert_error(too_long, 400, "INVALID_FIELD", "transKey")
    assert "trans_key" not in error["message"]


def test_status_refuses_an_unknown_or_repeated_query_parameter(pos: Pos) -> None:
    paid = pos.pay(sandbox_code(pos.http, "01"))
    key = paid["transKey"]
    for params, code, field in (
        ([("transKey", key), ("foo", "1")], "UNKNOWN_FIELD", "foo"),
        ([("transKey", "NOPE"), ("transKey", key)], "INVALID_FIELD", "transKey"),
        ([("transKey", key), ("transKey", key)], "INVALID_FIELD", "transKey"),
    ):
        answer = pos.http.get("/v1/payments", params=params, headers=pos.auth())
        assert_error(answer, 400, code, field)
    assert pos.status(key).json()["transId"] == paid["transId"]


def test_a_body_not_sent_as_json_is_refused(pos: Pos) -> None:
    code = sandbox_code(pos.http, "01")
    body = _request_body(code)
    sent = pos.raw("POST", "/v1/payments", json.dumps(body), **{"content-type": "text/plain"})
    assert_error(sent, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert_not_found(pos, body["transKey"])
