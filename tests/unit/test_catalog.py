"""The service catalog: the shipped data, lookups, immutability and the loader's guardrails."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kessai.domain.catalog import Catalog, Service, load_catalog, parse_catalog
from kessai.domain.errors import InvalidRequest

# serviceId -> (provider, display name, active). The wire contract: ids and providers never change.
EXPECTED = {
    "01": ("paypay", "PayPay", True),
    "02": ("docomo", "d払い", True),
    "03": ("kddi", "au PAY", True),
    "04": ("rakuten", "楽天ペイ", True),
    "05": ("mercari", "メルペイ", True),
    "06": ("line", "LINE Pay", False),
    "07": ("japanpost", "ゆうちょPay", True),
    "08": ("pring", "pring", True),
    "20": ("alipayplus", "Alipay+", True),
    "21": ("wechatpay", "WeChat Pay", True),
    "22": ("unionpay", "銀聯（UnionPay）", True),
}


def _service(service_id: str = "01", **changes: Any) -> Service:
    values: dict[str, Any] = {
        "service_id": service_id,
        "name": "Test",
        "name_en": "Test",
        "provider": "test",
        "active": True,
        "supports_customer_code": True,
        "supports_merchant_qr": False,
    }
    values.update(changes)
    return Service(**values)


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "service_id": "01",
        "name": "Test",
        "name_en": "Test",
        "provider": "test",
        "active": True,
        "supports_customer_code": True,
        "supports_merchant_qr": True,
    }
    row.update(changes)
    return row


def test_shipped_catalog_has_every_service_in_id_order() -> None:
    catalog = load_catalog()
    assert [service.service_id for service in catalog] == list(EXPECTED)
    assert len(catalog) == len(EXPECTED)
    for service in catalog:
        provider, name, active = EXPECTED[service.service_id]
        assert (service.provider, service.name, service.active) == (provider, name, active)
        assert service.name_en


def test_only_line_pay_has_ended() -> None:
    ended = [service.service_id for service in load_catalog() if not service.active]
    assert ended == ["06"]


def test_every_service_takes_customer_codes() -> None:
    # IDENTIFY-SCANNED-QR-CODE has a rule for every service, so every one must accept REQUEST.
    assert all(service.supports_customer_code for service in load_catalog())


def test_providers_are_distinct() -> None:
    providers = [service.provider for service in load_catalog()]
    assert len(providers) == len(set(providers))


def test_load_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()


def test_get_and_require_known_service() -> None:
    catalog = load_catalog()
    paypay = catalog.require("01")
    assert catalog.get("01") is paypay
    assert paypay.name == "PayPay"
    assert "01" in catalog


@pytest.mark.parametrize("service_id", ["", "1", "00", "09", "99", "001", " 01", "０１", "PayPay"])
def test_unknown_service(service_id: str) -> None:
    catalog = load_catalog()
    assert catalog.get(service_id) is None
    assert service_id not in catalog
    with pytest.raises(InvalidRequest) as caught:
        catalog.require(service_id)
    assert caught.value.code == "UNKNOWN_SERVICE"
    assert caught.value.field == "serviceId"
    assert caught.value.http_status == 400


@given(st.text(max_size=8))
def test_require_answers_a_service_or_unknown_service(service_id: str) -> None:
    catalog = load_catalog()
    try:
        service = catalog.require(service_id)
    except InvalidRequest as exc:
        assert exc.code == "UNKNOWN_SERVICE"
        assert service_id not in EXPECTED
    else:
        assert service.service_id == service_id


def test_catalog_and_services_are_immutable() -> None:
    catalog = load_catalog()
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.services = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.require("01").active = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        catalog._by_id["99"] = _service("99")  # type: ignore[index]


def test_catalog_orders_services_given_in_any_order() -> None:
    catalog = Catalog((_service("21"), _service("03"), _service("10")))
    assert [service.service_id for service in catalog] == ["03", "10", "21"]


def test_catalog_refuses_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="twice"):
        Catalog((_service("01"), _service("01", name="Other")))


@pytest.mark.parametrize("service_id", ["1", "001", "ab", "０１"])
def test_catalog_refuses_ids_that_are_not_two_digits(service_id: str) -> None:
    with pytest.raises(ValueError, match="two digits"):
        Catalog((_service(service_id),))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "expected one or more"),
        ({"service": []}, "expected one or more"),
        ({"service": ["01"]}, "not a table"),
        ({"service": [_row(colour="red")]}, "unknown keys"),
        ({"service": [_row(active="yes")]}, "active must be a bool"),
        ({"service": [_row(service_id=1)]}, "service_id must be a str"),
        ({"service": [{k: v for k, v in _row().items() if k != "name_en"}]}, "name_en"),
        ({"service": [_row(name="")]}, "empty"),
        ({"service": [_row(provider="Pay Pay")]}, "lower-case"),
        ({"service": [_row(), _row()]}, "twice"),
    ],
)
def test_parse_catalog_refuses_malformed_documents(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_catalog(document)


def test_parse_catalog_reads_a_minimal_document() -> None:
    catalog = parse_catalog({"service": [_row(service_id="42", supports_merchant_qr=False)]})
    service = catalog.require("42")
    assert service.supports_customer_code
    assert not service.supports_merchant_qr
