"""A body that repeats a key is found out exactly, and STATUS's query holds one transKey only."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kessai.api.sandbox_pages import CodesBody
from kessai.api.terminal import repeated_key, status_trans_key
from kessai.api.wire import LoginBody, QrBody, RefundBody, RequestBody
from kessai.domain.errors import InvalidRequest

CODE = "900081818845855642567638"


def _key(body: bytes, body_type: type[msgspec.Struct] = RequestBody) -> str | None:
    return repeated_key(body, msgspec.json.decode(body, type=body_type))


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"transKey":"DK1","amount":100,"amount":5000,"code":"%s"}', "amount"),
        (b'{"transKey":"DK1","amount":5000,"code":"%s","amount":100}', "amount"),
        # Written with escapes, a key is still the same key.
        (b'{"transKey":"DK1","\\u0061mount":100,"amount":5000,"code":"%s"}', "amount"),
        (
            b'{"transKey":"DK1","amount":100,"\\u0061\\u006d\\u006fu\\u006et":1,"code":"%s"}',
            "amount",
        ),
        (b'{"transKey":"DK1","transKey":"DK2","amount":100,"code":"%s"}', "transKey"),
        (b'{"transKey":"DK1","amount":100,"code":"%s","code":"1"}', "code"),
        # The same value twice, or the optional field twice with its default value.
        (b'{"transKey":"DK1","amount":100,"amount":100,"code":"%s"}', "amount"),
        (b'{"transKey":"D","amount":1,"code":"%s","serviceId":null,"serviceId":null}', "serviceId"),
        (b'{ "transKey" : "DK1" , "amount" : 1 , "amount" : 2 , "code" : "%s" }', "amount"),
    ],
)
def test_a_repeated_key_is_named(body: bytes, key: str) -> None:
    assert _key(body % CODE.encode()) == key


@pytest.mark.parametrize(
    "body",
    [
        b'{"transKey":"DK1","amount":100,"code":"%s"}',
        b'{"transKey":"DK1","amount":100,"code":"%s","serviceId":"01"}',
        b'{"transKey":"DK1","amount":100,"code":"%s","serviceId":null}',
        b'{"code":"%s","amount":100,"transKey":"DK1"}',
        # Colons and key-like text inside strings are no keys.
        b'{"transKey":"DK1","amount":100,"code":"%s:\\"amount\\":5000"}',
        b'{"transKey":"DK1","amount":100,"code":"%s\\u003a"}',
        b'{"\\u0074ransKey":"DK1","amount":100,"code":"%s"}',
        b' {"transKey":"DK1",\n"amount":100,\t"code":"%s"} ',
    ],
)
def test_a_body_without_repeats_passes(body: bytes) -> None:
    assert _key(body % CODE.encode()) is None


def test_every_body_type_is_checked_alike() -> None:
    login = b'{"mid":"1234567890123456","key":"AA:BB","password":"x","os":"150092"%s}'
    assert _key(login % b"", LoginBody) is None
    assert _key(login % b',"key":"CC:DD"', LoginBody) == "key"
    refund = b'{"passCode":"1234","amount":100%s}'
    assert _key(refund % b"", RefundBody) is None
    assert _key(refund % b',"amount":900', RefundBody) == "amount"
    assert _key(refund % b',"amount":null', RefundBody) == "amount"
    qr = b'{"transKey":"Q1","amount":100,"serviceId":"01","ttlSeconds":300%s}'
    assert _key(qr % b"", QrBody) is None
    assert _key(qr % b',"ttlSeconds":30', QrBody) == "ttlSeconds"
    # A field sent with its default value (count 1) still lets a repeat be found.
    assert _key(b'{"serviceId":"01","count":1}', CodesBody) is None
    assert _key(b'{"serviceId":"01","count":1,"count":5}', CodesBody) == "count"


class _Any(msgspec.Struct):
    """A body type that takes nested values, to check objects at every level."""

    a: Any = None
    b: Any = None


def test_a_repeat_in_a_nested_object_is_found() -> None:
    assert _key(b'{"a":{"x":1,"x":2}}', _Any) == "x"
    assert _key(b'{"a":[{"x":1},{"x":2}]}', _Any) is None
    assert _key(b'{"a":{"x":1},"b":{"x":2}}', _Any) is None
    assert _key(b'{"a":{}}', _Any) is None


_KEYS = st.sampled_from(["transKey", "amount", "code", "serviceId"])
_TEXT = st.sampled_from(["A1", "a:b", 'x":"amount', "\\", "\u00e9", ""])


def _escaped(key: str, escape: list[bool]) -> str:
    return "".join(f"\\u{ord(c):04x}" if escape[i] else c for i, c in enumerate(key))


@settings(max_examples=400, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(_KEYS, st.lists(st.booleans(), min_size=12, max_size=12), _TEXT, st.booleans()),
        min_size=1,
        max_size=7,
    )
)
def test_the_answer_is_exact(pairs: list[tuple[str, list[bool], str, bool]]) -> None:
    """Whatever the body, a key is named exactly when one is repeated (the first one repeated)."""
    parts = []
    for key, escape, text, spaced in pairs:
        value: Any = {"amount": 100, "serviceId": None if text == "" else "01"}.get(key, text)
        colon = " : " if spaced else ":"
        parts.append(f'"{_escaped(key, escape)}"{colon}{json.dumps(value)}')
    body = ("{" + ",".join(parts) + "}").encode()
    try:
        decoded = msgspec.json.decode(body, type=RequestBody)
    except msgspec.ValidationError:
        return  # refused anyway, before the check
    keys = [key for key, *_ in pairs]
    expected = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    assert repeated_key(body, decoded) == expected


# --- STATUS ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "trans_key"),
    [
        (b"transKey=SALE1", "SALE1"),
        (b"transKey=SALE%31", "SALE1"),
        (b"transKey=", ""),
        (b"transKey", ""),
        (b"transKey=A&", "A"),
    ],
)
def test_status_takes_one_trans_key(query: bytes, trans_key: str) -> None:
    assert status_trans_key(query) == trans_key


@pytest.mark.parametrize(
    ("query", "code", "field"),
    [
        (b"transKey=A&foo=1", "UNKNOWN_FIELD", "foo"),
        (b"foo=1&transKey=A", "UNKNOWN_FIELD", "foo"),
        (b"transkey=A", "UNKNOWN_FIELD", "transkey"),
        (b"transKey=A&transKey=B", "INVALID_FIELD", "transKey"),
        (b"transKey=A&transKey=A", "INVALID_FIELD", "transKey"),
        (b"", "INVALID_FIELD", "transKey"),
        (b"foo=" + b"x" * 100 + b"&transKey=A", "UNKNOWN_FIELD", "foo"),
    ],
)
def test_status_refuses_other_parameters_and_repeats(query: bytes, code: str, field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        status_trans_key(query)
    assert (refused.value.code, refused.value.field) == (code, field)
    assert refused.value.http_status == 400
    assert field in refused.value.message
