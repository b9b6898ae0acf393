"""A receiver's signature check: every bad header is a SignatureError naming what failed."""

from __future__ import annotations

import pytest

from kessai import webhooks

SECRET = "whsec_right"
BODY = b'{"id":"evt_1"}'
NOW = 1_795_870_800


def _header(**changes: str) -> str:
    parts = dict(item.split("=", 1) for item in webhooks.sign(SECRET, BODY, NOW).split(","))
    return ",".join(f"{key}={value}" for key, value in (parts | changes).items())


def _part(header: str, body: bytes = BODY, secret: str = SECRET) -> tuple[str, str]:
    with pytest.raises(webhooks.SignatureError) as caught:
        webhooks.verify(secret, header, body, now=NOW)
    return caught.value.part, str(caught.value)


def test_a_good_signature_verifies_and_each_wrong_part_is_named() -> None:
    assert webhooks.verify(SECRET, _header(), BODY, now=NOW) == NOW
    assert _part(_header(), body=b'{"id": "evt_1"}')[0] == "body"
    assert _part(_header(), secret="whsec_wrong")[0] == "secret"
    with pytest.raises(webhooks.SignatureError) as caught:
        webhooks.verify(SECRET, _header(), BODY, now=NOW + 3600)
    assert caught.value.part == "clock"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"b": "é" * 64}, "b"),  # compare_digest raised TypeError on non-ASCII text
        ({"v1": "é" * 64}, "v1"),
        ({"b": "ｆ" * 64}, "b"),  # a full-width letter is not hex either
        ({"t": "١٧٩٥٨٧٠٨٠٠"}, "t"),  # Arabic-Indic digits, which int() accepts
        ({"t": "1_795_870_800"}, "t"),
        ({"v1": ""}, "v1"),
    ],
)
def test_a_field_not_in_the_signed_form_is_a_malformed_header(
    changes: dict[str, str], field: str
) -> None:
    part, message = _part(_header(**changes))
    assert part == "header"
    assert f"{field} is" in message


@pytest.mark.parametrize(
    "header",
    ["t=1,b=,v1=", "t=,b=,v1=", "nonsense", "", "b=x,v1=y", "t=1,t=2,b=,v1="],
)
def test_an_empty_missing_or_repeated_field_is_a_malformed_header(header: str) -> None:
    part, message = _part(header)
    assert part == "header"
    assert message.startswith(f"malformed {webhooks.SIGNATURE_HEADER} header")


def test_a_repeated_field_is_refused_rather_than_one_of_its_values_used() -> None:
    good = _header()
    part, message = _part(good + ",t=1")
    assert (part, "t repeated" in message) == ("header", True)
