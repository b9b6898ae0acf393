"""Every field rule of the guide (and our own fields), accepted and refused values, amounts."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kessai.domain import fields
from kessai.domain.errors import InvalidRequest

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
DEVANAGARI = str.maketrans("0123456789", "०१२३४५६७८९")
SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")

# field -> (accepted values, refused values). Each refused value breaks one rule.
CASES: dict[str, tuple[list[str], list[str]]] = {
    "mid": (
        ["1234567890123456", "0000000000000000", "9999999999999999"],
        [
            "",
            "123456789012345",  # 15
            "12345678901234567",  # 17
            "1234567890123456".translate(FULL_WIDTH),
            "1234567890123456".translate(ARABIC_INDIC),
            "123456789012345a",
            " 1234567890123456",
            "1234567890123456\n",
            "1234-56789012345",
            "+234567890123456",
        ],
    ),
    "key": (
        ["A", "AA:BB:CC:DD:EE:FF", "aa-bb-cc-dd-ee-ff", "device42", "x" * 50, "0"],
        [
            "",
            "x" * 51,
            "AA BB",
            "AA_BB",
            "AA.BB",
            "キー",
            "ＡＢ",
            "AB\n",
            "AB/CD",
        ],
    ),
    "password": (
        ["Abcdef123456", "ABCDEFGHIJKL", "123456789012", "a1b2c3d4e5f6"],
        [
            "",
            "Abcdef12345",  # 11
            "Abcdef1234567",  # 13
            "Abcdef12345!",
            "Abcdef 12345",
            "Ａbcdef123456",  # a full-width letter
            "Abcdef12345６",  # a full-width digit
            "Abcdéf123456",
            "Abcdef123456\n",
        ],
    ),
    "passCode": (
        ["0000", "1234", "9999", "0042"],
        [
            "",
            "123",
            "12345",
            "１２３４",
            "1234".translate(ARABIC_INDIC),
            "1234".translate(DEVANAGARI),
            "1234".translate(SUPERSCRIPT),
            "12a4",
            "12 4",
            "-123",
            "1234\n",
        ],
    ),
    "os": (
        ["123456", "000001", "999999"],
        ["", "12345", "1234567", "１２３４５６", "12345x", "12 456", "123456\n"],
    ),
    "transKey": (
        ["A", "k1", "ORDER20260105A1", "x" * 34, "0123456789"],
        [
            "",
            "x" * 35,
            "order-1",
            "order_1",
            "order 1",
            "注文1",
            "ＡＢＣ",
            "１２３",
            "K1\n",
        ],
    ),
    "refundKey": (
        ["R", "refund1", "y" * 34],
        ["", "y" * 35, "refund-1", "refund 1", "返金", "１２３"],
    ),
    "transId": (
        ["1234567890", "0000000001"],
        [
            "",
            "123456789",
            "12345678901",
            "１２３４５６７８９０",
            "1234567890".translate(ARABIC_INDIC),
            "123456789a",
            "12345 7890",
            "1234567890\n",
        ],
    ),
    "serviceId": (
        ["01", "20", "99", "00"],
        ["", "1", "001", "０１", "0a", " 1", "01\n", "1".translate(ARABIC_INDIC) * 2],
    ),
    "voucherNo": (
        ["V1", "SLIP-0001", "x" * 20, "0"],
        ["", "x" * 21, "SLIP 0001", "SLIP_0001", "伝票1", "ＳＬＩＰ", "V1\n", "V/1"],
    ),
}

ACCEPTED = [(name, value) for name, (ok, _) in CASES.items() for value in ok]
REFUSED = [(name, value) for name, (_, bad) in CASES.items() for value in bad]


def test_every_field_rule_has_cases() -> None:
    assert set(CASES) == set(fields._RULES)


@pytest.mark.parametrize(("name", "value"), ACCEPTED)
def test_accepted(name: str, value: str) -> None:
    assert fields.check(name, value) == value


@pytest.mark.parametrize(("name", "value"), REFUSED)
def test_refused_with_a_clear_error(name: str, value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        fields.check(name, value)
    error = caught.value
    assert error.code == "INVALID_FIELD"
    assert error.field == name
    assert error.http_status == 400
    assert error.message.startswith(f"{name} must be ")
    # The message never echoes the value back (it may be a secret such as a password).
    if value.strip():
        assert value not in error.message


@pytest.mark.parametrize(
    ("name", "length"),
    [("mid", 16), ("passCode", 4), ("os", 6), ("transId", 10), ("serviceId", 2)],
)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_only_ascii_digits_count_as_digits(name: str, length: int, data: st.DataObject) -> None:
    """Any Unicode decimal digit other than 0-9 (full-width, Arabic-Indic, …) is refused."""
    other_digit = st.characters(categories=["Nd"]).filter(lambda c: c not in "0123456789")
    chars = data.draw(
        st.lists(
            st.one_of(st.sampled_from("0123456789"), other_digit),
            min_size=length,
            max_size=length,
        ).filter(lambda cs: not all(c in "0123456789" for c in cs))
    )
    value = "".join(chars)
    assert value.isdigit()  # Python itself calls it digits: the rule must not.
    with pytest.raises(InvalidRequest):
        fields.check(name, value)


@settings(max_examples=200, deadline=None)
@given(value=st.text(max_size=60))
def test_check_agrees_with_an_ascii_reading_of_each_rule(value: str) -> None:
    ascii_rules = {
        "mid": r"[0-9]{16}",
        "key": r"[A-Za-z0-9:\-]{1,50}",
        "password": r"[A-Za-z0-9]{12}",
        "passCode": r"[0-9]{4}",
        "os": r"[0-9]{6}",
        "transKey": r"[A-Za-z0-9]{1,34}",
        "refundKey": r"[A-Za-z0-9]{1,34}",
        "transId": r"[0-9]{10}",
        "serviceId": r"[0-9]{2}",
        "voucherNo": r"[A-Za-z0-9\-]{1,20}",
    }
    for name, pattern in ascii_rules.items():
        expected = re.fullmatch(pattern, value, flags=re.ASCII) is not None
        try:
            fields.check(name, value)
        except InvalidRequest:
            assert not expected, (name, value)
        else:
            assert expected, (name, value)
            assert value.isascii()


# --- Amounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [1, 2, 100, 9_999_998, 9_999_999])
def test_amount_in_bounds(amount: int) -> None:
    assert fields.check_amount(amount) == amount


@pytest.mark.parametrize("amount", [0, -1, 10_000_000, 10_000_001, -9_999_999, 2**63])
def test_amount_out_of_bounds(amount: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        fields.check_amount(amount)
    assert caught.value.code == "INVALID_FIELD"
    assert caught.value.field == "amount"
    assert "1 and 9,999,999 yen" in caught.value.message


@pytest.mark.parametrize(
    "amount",
    [True, False, 1.0, 100.0, 100.5, "100", b"100", Decimal(100), None, [100], float("nan")],
    ids=repr,
)
def test_amount_must_be_an_integer_not_a_bool(amount: Any) -> None:
    with pytest.raises(InvalidRequest) as caught:
        fields.check_amount(amount)
    assert caught.value.code == "INVALID_FIELD"
    assert caught.value.field == "amount"
    assert "integer number of yen" in caught.value.message


def test_amount_error_names_the_given_field() -> None:
    with pytest.raises(InvalidRequest) as caught:
        fields.check_amount(0, field="refundAmount")
    assert caught.value.field == "refundAmount"
    assert caught.value.message.startswith("refundAmount ")


@given(st.integers())
def test_amount_accepted_exactly_within_bounds(amount: int) -> None:
    inside = 1 <= amount <= 9_999_999
    try:
        assert fields.check_amount(amount) == amount
    except InvalidRequest:
        assert not inside
    else:
        assert inside
