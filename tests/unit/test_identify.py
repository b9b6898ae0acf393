"""IDENTIFY-SCANNED-QR-CODE: every rule, product barcodes, EMV CPM, the TLV parser, fuzzing.

Tests parametrized over ``rules()`` make a new row in code_rules.toml carry its own cases: a row's
``example`` must identify under that row and its ``counter_example`` must not.
"""

from __future__ import annotations

import base64
import contextlib
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kessai.domain.catalog import load_catalog
from kessai.domain.errors import InvalidRequest, UnprocessableCode
from kessai.domain.identify import (
    MAX_CODE_LENGTH,
    MAX_TLV_DEPTH,
    CodeRule,
    DigitsTemplate,
    EmvTemplate,
    Identification,
    TlvError,
    TlvNode,
    _build_table,
    encode_tlv,
    generate_code,
    identify,
    parse_tlv,
    rules,
)

DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "identification.md"
JAPANESE_SERVICES = {"01", "02", "03", "04", "05", "06", "07", "08"}
UNIONPAY_AID = "A000000333010101"
VISA_AID = "A0000000031010"
GENERATED_PER_SERVICE = 1000
DECIMAL = "0123456789"

RULES = rules()
RULE_IDS = [rule.rule_id for rule in RULES]


# --- Helpers --------------------------------------------------------------------------------------


def identify_or_documented_error(code: str) -> Identification | None:
    """Identify, allowing only the two documented errors; anything else fails the test."""
    try:
        result = identify(code)
    except InvalidRequest as exc:
        assert (exc.code, exc.field) == ("INVALID_FIELD", "code")
        return None
    except UnprocessableCode as exc:
        assert (exc.code, exc.field) == ("NOT_A_PAYMENT_CODE", "code")
        assert exc.message
        return None
    assert load_catalog().get(result.service_id) is not None
    assert result.rule_id in RULE_IDS
    return result


def not_a_payment_code(code: str) -> str:
    with pytest.raises(UnprocessableCode) as caught:
        identify(code)
    assert caught.value.code == "NOT_A_PAYMENT_CODE"
    assert caught.value.field == "code"
    assert caught.value.http_status == 422
    return caught.value.message


def services_matching(code: str) -> set[str]:
    return {rule.service_id for rule in RULES if rule.matches(code)}


def cpm(*objects: bytes, header: bytes | None = None) -> str:
    """Base64 of a CPM payload: the CPV01 header, then ``objects`` as given."""
    start = encode_tlv("85", b"CPV01") if header is None else header
    return base64.b64encode(start + b"".join(objects)).decode("ascii")


def application(aid: str, *extra: bytes) -> bytes:
    return encode_tlv("61", encode_tlv("4F", bytes.fromhex(aid)) + b"".join(extra))


def gtin(body: str) -> str:
    """``body`` with its GS1 check digit appended (computed independently of the module)."""
    weights = [3 if i % 2 == 0 else 1 for i in range(len(body))]
    total = sum(int(d) * w for d, w in zip(reversed(body), weights, strict=True))
    return body + str((10 - total % 10) % 10)


def generator_rule(service_id: str, kind: str) -> CodeRule | None:
    for rule in RULES:
        if rule.service_id == service_id and rule.kind == kind and rule.generate is not None:
            return rule
    return None


# --- Every rule, from the table -------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_example_identifies_under_its_own_rule(rule: CodeRule) -> None:
    # Reported under this rule id (not just this service): no earlier row shadows it.
    assert identify(rule.example) == Identification(rule.service_id, rule.rule_id, rule.kind)
    assert rule.matches(rule.example)


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_counter_example_is_not_matched_by_its_rule(rule: CodeRule) -> None:
    assert not rule.matches(rule.counter_example)
    result = identify_or_documented_error(rule.counter_example)
    assert result is None or result.rule_id != rule.rule_id


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_example_matches_rules_of_one_service_only(rule: CodeRule) -> None:
    # Overlaps are allowed inside a service (the Alipay+ family), never across services: rule
    # order must not be what keeps two wallets apart.
    assert services_matching(rule.example) == {rule.service_id}


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_rule_is_documented(rule: CodeRule) -> None:
    assert rule.source
    assert rule.confidence in {"high", "medium", "medium-low", "low"}
    assert f"`{rule.rule_id}`" in DOCS_PAGE.read_text(encoding="utf-8")


def test_every_rule_row_in_the_toml_is_on_the_docs_page() -> None:
    toml_text = (Path(__file__).resolve().parents[2] / "src/kessai/data/code_rules.toml").read_text(
        encoding="utf-8"
    )
    ids = re.findall(r'^id = "([^"]+)"', toml_text, flags=re.MULTILINE)
    assert ids == RULE_IDS
    page = DOCS_PAGE.read_text(encoding="utf-8")
    assert [rule_id for rule_id in ids if f"`{rule_id}`" not in page] == []


def test_every_rule_names_a_catalog_service() -> None:
    catalog = load_catalog()
    assert all(rule.service_id in catalog for rule in RULES)
    assert {service.service_id for service in catalog} <= {rule.service_id for rule in RULES}


def test_japanese_rules_come_before_alipay_ranges() -> None:
    last_japanese = max(i for i, rule in enumerate(RULES) if rule.service_id in JAPANESE_SERVICES)
    first_alipay = min(i for i, rule in enumerate(RULES) if rule.service_id == "20")
    assert last_japanese < first_alipay


@pytest.mark.parametrize(
    ("code", "rule_id"),
    [
        ("2812345678901234567", "alipay-legacy-19"),
        ("28123456789012345678", "alipaycn"),  # 20 digits starting 28: only AlipayCN allows it
        ("300000000000000000000000", "alipaycn"),  # 24 digits, no "02" business type
        ("250000020000000000000000", "alipayplus-24"),  # both mainstream and AlipayCN: first wins
        ("3158993112345678901", "yucho-pay"),
        ("3158994012345678901", "yucho-pay"),
        ("154567890123456789", "wechat-pay"),
        ("104567890123456789", "wechat-pay"),
    ],
)
def test_boundaries(code: str, rule_id: str) -> None:
    assert identify(code).rule_id == rule_id


@pytest.mark.parametrize(
    "code",
    [
        "3158993012345678901",  # ゆうちょPay's YY stops at 31..40
        "3158994112345678901",
        "164567890123456789",  # WeChat Pay starts 10-15
        "09456789012345678",  # 17 digits starting 09
        "2412345678901234567",  # Alipay ranges start at 25
        "3112345678901234567",  # ... and end at 30
        "300000000000000000000000000000000",  # 33 digits: longer than any Alipay+ code
        "1",
    ],
)
def test_near_misses_are_not_payment_codes(code: str) -> None:
    assert "matches no wallet" in not_a_payment_code(code)


# --- Product barcodes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "symbology"),
    [
        ("4006381333931", "EAN-13"),
        ("4901234567894", "EAN-13"),  # a JAN code (49 = Japan)
        ("4549292012347", "EAN-13"),
        ("73513537", "EAN-8"),
        ("49123456", "EAN-8"),
        ("036000291452", "UPC-A"),
        ("012345678905", "UPC-A"),
    ],
)
def test_product_barcodes_are_named(code: str, symbology: str) -> None:
    assert gtin(code[:-1]) == code, "the test data itself must carry a valid check digit"
    message = not_a_payment_code(code)
    assert message == f"{code} is a product barcode ({symbology}), not a payment code"


@given(st.sampled_from([7, 11, 12]).flatmap(lambda n: st.text(DECIMAL, min_size=n, max_size=n)))
def test_any_valid_gtin_is_called_a_product_barcode(body: str) -> None:
    assert "is a product barcode" in not_a_payment_code(gtin(body))


@pytest.mark.parametrize("code", ["4006381333932", "73513536", "036000291453"])
def test_wrong_check_digit_is_not_called_a_product(code: str) -> None:
    message = not_a_payment_code(code)
    assert "product" not in message
    assert code not in message, "an unrecognised code must not be echoed (it may be live)"


# --- Input that is not a scanned code -------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "",
        "9" * (MAX_CODE_LENGTH + 1),
        "A" * 10_000,
        "900081818802468013579246\n",
        "900081818802468013579246\r\n",
        " 900081818802468013579246",
        "9000818188 02468013579246",
        "90008181880246801357924\t6",
        "9000818188\x0002468013579246",
        "\u3000900081818802468013579246",  # ideographic space
        "900081818802468013579246\u200b",  # zero-width space (format character)
        "\ufeff900081818802468013579246",  # byte order mark
        "\x1b[31m",
    ],
)
def test_text_that_cannot_be_a_scanned_code_is_an_invalid_field(code: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        identify(code)
    assert (caught.value.code, caught.value.field) == ("INVALID_FIELD", "code")
    assert caught.value.http_status == 400


@pytest.mark.parametrize("code", [None, 9000818188, b"9000818188"])
def test_non_string_is_an_invalid_field(code: Any) -> None:
    with pytest.raises(InvalidRequest):
        identify(code)


def test_a_code_of_exactly_the_maximum_length_is_looked_at() -> None:
    assert "matches no wallet" in not_a_payment_code("9" * MAX_CODE_LENGTH)


PAYPAY_EXAMPLE = "900081818802468013579246"
FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


@pytest.mark.parametrize(
    "code", [PAYPAY_EXAMPLE.translate(FULL_WIDTH), PAYPAY_EXAMPLE.translate(ARABIC_INDIC)]
)
def test_non_ascii_digits_are_not_digits(code: str) -> None:
    # Full-width and Arabic-Indic digits are str.isdigit() but never what a scanner sends.
    not_a_payment_code(code)


# --- EMV consumer-presented mode ------------------------------------------------------------------


def test_unionpay_emv_payload_identifies() -> None:
    code = cpm(application(UNIONPAY_AID, encode_tlv("50", b"UnionPay")))
    assert code.startswith("hQVDUFYwM")
    assert identify(code) == Identification("22", "unionpay-emv", "emv_cpm")


def test_unsupported_aid_is_named() -> None:
    message = not_a_payment_code(cpm(application(VISA_AID)))
    assert message == f"EMV payment code with unsupported application AID {VISA_AID}"


def test_co_badged_code_routes_by_the_first_supported_application() -> None:
    code = cpm(application(VISA_AID), application(UNIONPAY_AID))
    assert identify(code).service_id == "22"


def test_missing_base64_padding_is_tolerated() -> None:
    code = cpm(application(UNIONPAY_AID, encode_tlv("50", b"UP")))
    assert code.endswith("=")
    assert identify(code.rstrip("=")).service_id == "22"


def test_long_form_lengths_and_nested_templates() -> None:
    filler = encode_tlv("9F10", bytes(200))  # issuer application data: forces a 0x81 length
    template = application(UNIONPAY_AID, filler)
    assert template[1] == 0x81
    common = encode_tlv("62", encode_tlv("9F36", b"\x00\x01") + encode_tlv("63", b""))
    transparent = encode_tlv("64", encode_tlv("DF8101", b"\x01"))  # 3-byte tag
    assert identify(cpm(template, common, transparent)).service_id == "22"


def test_aid_outside_an_application_template_is_not_used() -> None:
    code = cpm(encode_tlv("62", encode_tlv("4F", bytes.fromhex(UNIONPAY_AID))))
    assert "application template" in not_a_payment_code(code)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (base64.b64encode(b"hello, world").decode(), "no 85 'CPV01' header"),
        ("AAAA", "no 85 'CPV01' header"),
        (cpm(header=encode_tlv("85", b"CPV02")), "no 85 'CPV01' header"),
        (cpm(), "without an application template (61)"),
        (cpm(encode_tlv("61", encode_tlv("50", b"UnionPay"))), "without an application identifier"),
        (cpm(encode_tlv("61", encode_tlv("4F", bytes.fromhex("A00000")))), "malformed 3-byte AID"),
        (cpm(b"\x61\x10\x4f\x08"), "malformed EMV payment code: tag 61 declares 16 bytes"),
        (cpm(b"\x61\x80"), "indefinite length"),
        (cpm(b"\x9f"), "truncated tag"),
        ("https://qr.paypay.ne.jp/abc", "neither a digit code nor a Base64 EMV payment code"),
        ("hQVDUFYwM", "neither a digit code nor a Base64 EMV payment code"),  # length 9 mod 4 == 1
        ("決済コード", "neither a digit code nor a Base64 EMV payment code"),
    ],
)
def test_emv_failures_say_why(code: str, reason: str) -> None:
    assert reason in not_a_payment_code(code)


# --- The TLV parser -------------------------------------------------------------------------------


def test_parse_tlv_reads_nested_multibyte_tags_and_long_lengths() -> None:
    data = (
        b"\x85\x05CPV01"
        + b"\x61\x81\x0b"  # long-form length for a short value is legal BER
        + b"\x4f\x05\xa0\x00\x00\x03\x33"
        + b"\x9f\x26\x01\xff"
        + b"\x5a\x82\x00\x01\x62"  # two length bytes
    )
    nodes = parse_tlv(data)
    assert [node.tag for node in nodes] == ["85", "61", "5A"]
    assert nodes[1].constructed
    assert [child.tag for child in nodes[1].children] == ["4F", "9F26"]
    assert nodes[1].children[1].value == b"\xff"
    assert nodes[2].value == b"\x62"
    assert not nodes[2].children, "a primitive tag's value is not parsed as TLV"


def test_parse_tlv_of_nothing_is_nothing() -> None:
    assert parse_tlv(b"") == ()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x4f\x05\xa0\x00", "declares 5 bytes but only 2 remain"),
        (b"\x4f\x81\xff" + bytes(10), "declares 255 bytes"),
        (b"\x4f\x83\xff\xff\xff", "declares 16777215 bytes"),
        (b"\x61\x03\x4f\x05\xa0", "declares 5 bytes but only 1 remain"),  # inside a template
        (b"\x4f", "has no length"),
        (b"\x4f\x82\x01", "truncated length field"),
        (b"\x4f\x84\x00\x00\x00\x01\x00", "4-byte length field"),
        (b"\x4f\xff" + bytes(127), "127-byte length field"),
        (b"\x4f\x80\x00\x00", "indefinite length"),
        (b"\x9f", "truncated tag"),
        (b"\x9f\x81", "truncated tag"),
        (b"\x9f\x81\x81\x01\x00", "tag longer than 3 bytes"),
    ],
)
def test_parse_tlv_refuses_truncated_and_oversized(data: bytes, reason: str) -> None:
    with pytest.raises(TlvError, match=re.escape(reason)):
        parse_tlv(data)


def test_parse_tlv_limits_nesting_depth() -> None:
    data = b"\x01\x00"
    for _ in range(MAX_TLV_DEPTH - 1):
        data = encode_tlv("61", data)
    assert parse_tlv(data)  # exactly at the limit
    with pytest.raises(TlvError, match="nested"):
        parse_tlv(encode_tlv("61", data))


_PRIMITIVE_TAGS = st.sampled_from(["4F", "50", "5A", "57", "9F26", "9F36", "DF8101", "85"])


def _tlv_trees(depth: int = 2) -> st.SearchStrategy[list[TlvNode]]:
    leaf = st.builds(TlvNode, _PRIMITIVE_TAGS, st.binary(max_size=300))
    if depth == 0:
        return st.lists(leaf, max_size=4)
    template = st.builds(
        lambda tag, children: TlvNode(tag, _encode_all(children), tuple(children)),
        st.sampled_from(["61", "62", "63", "64"]),
        _tlv_trees(depth - 1),
    )
    return st.lists(st.one_of(leaf, template), max_size=4)


def _encode_all(nodes: list[TlvNode]) -> bytes:
    return b"".join(encode_tlv(node.tag, node.value) for node in nodes)


@given(_tlv_trees())
def test_parse_tlv_round_trips(nodes: list[TlvNode]) -> None:
    assert parse_tlv(_encode_all(nodes)) == tuple(nodes)


@given(st.binary(max_size=400))
def test_parse_tlv_raises_only_tlv_error(data: bytes) -> None:
    with contextlib.suppress(TlvError):
        parse_tlv(data)


# --- Generated codes (the sandbox wallets) --------------------------------------------------------


@pytest.mark.parametrize("service_id", [service.service_id for service in load_catalog()])
def test_generated_digit_codes_identify_as_their_service(service_id: str) -> None:
    rule = generator_rule(service_id, "digits")
    assert rule is not None, f"service {service_id} has no digit code generator"
    assert isinstance(rule.generate, DigitsTemplate)
    rng = random.Random(f"digits-{service_id}")
    for _ in range(GENERATED_PER_SERVICE):
        code = generate_code(service_id, rng)
        assert len(code) == rule.generate.length
        assert rule.matches(code), code
        assert identify(code).service_id == service_id, code
        assert services_matching(code) == {service_id}, code


def test_generated_emv_codes_identify_as_unionpay() -> None:
    rng = random.Random("emv-22")
    seen: set[str] = set()
    for _ in range(GENERATED_PER_SERVICE):
        code = generate_code("22", rng, emv=True)
        assert identify(code) == Identification("22", "unionpay-emv", "emv_cpm")
        seen.add(code)
    assert len(seen) == GENERATED_PER_SERVICE, "the cryptogram and PAN must vary"


def test_generated_emv_code_layout() -> None:
    code = generate_code("22", random.Random(7), emv=True)
    nodes = parse_tlv(base64.b64decode(code))
    assert [node.tag for node in nodes] == ["85", "61"]
    assert nodes[0].value == b"CPV01"
    fields = {child.tag: child.value for child in nodes[1].children}
    assert list(fields) == ["4F", "50", "5A", "9F26"]
    assert fields["4F"].hex().upper() == UNIONPAY_AID
    assert fields["50"] == b"UnionPay"
    assert len(fields["9F26"]) == 8
    pan = fields["5A"].hex().upper()
    assert pan.endswith("F")
    pan = pan[:-1]
    assert len(pan) == 19
    assert pan.startswith("62")
    assert _luhn_valid(pan)


def _luhn_valid(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def test_generation_is_reproducible_from_the_seed() -> None:
    first = [generate_code("01", random.Random(42)) for _ in range(3)]
    assert first == [generate_code("01", random.Random(42)) for _ in range(3)]


@pytest.mark.parametrize("service_id", ["", "99", "1", "PayPay"])
def test_generating_for_an_unknown_service(service_id: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate_code(service_id, random.Random(0))
    assert (caught.value.code, caught.value.field) == ("UNKNOWN_SERVICE", "serviceId")


def test_generating_emv_for_a_service_without_one() -> None:
    assert generator_rule("01", "emv_cpm") is None
    with pytest.raises(InvalidRequest) as caught:
        generate_code("01", random.Random(0), emv=True)
    assert caught.value.code == "SERVICE_NOT_SUPPORTED"


def test_emv_generator_template_is_under_its_rule() -> None:
    rule = generator_rule("22", "emv_cpm")
    assert rule is not None
    assert isinstance(rule.generate, EmvTemplate)
    assert rule.generate.aid.startswith(rule.pattern)


# --- Fuzzing: nothing but the two documented errors -----------------------------------------------


@settings(max_examples=500)
@given(st.text(DECIMAL, min_size=1, max_size=40))
def test_random_digit_strings(code: str) -> None:
    result = identify_or_documented_error(code)
    if result is not None:
        assert result.kind == "digits"


@settings(max_examples=500)
@given(st.text(max_size=MAX_CODE_LENGTH + 20))
def test_random_text(code: str) -> None:
    identify_or_documented_error(code)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_as_base64(data: bytes) -> None:
    identify_or_documented_error(base64.b64encode(data).decode("ascii"))


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_after_the_cpm_header(data: bytes) -> None:
    # Gets random data past the header check and into the TLV parser and AID lookup.
    identify_or_documented_error(cpm(data))


@settings(max_examples=500)
@given(st.binary(max_size=MAX_CODE_LENGTH + 20))
def test_random_bytes_decoded_as_latin1(data: bytes) -> None:
    identify_or_documented_error(data.decode("latin-1"))


@settings(max_examples=500)
@given(st.integers(0, 2**32), st.data())
def test_mutated_emv_payloads(seed: int, data: st.DataObject) -> None:
    payload = bytearray(base64.b64decode(generate_code("22", random.Random(seed), emv=True)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(payload) - 1))
        payload[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    identify_or_documented_error(base64.b64encode(bytes(payload[:cut])).decode("ascii"))


# --- The loader's guardrails ----------------------------------------------------------------------


def _rule_row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "test",
        "service_id": "01",
        "kind": "digits",
        "pattern": "1[0-9]{3}",
        "source": "a test",
        "confidence": "high",
        "example": "1234",
        "counter_example": "2234",
    }
    row.update(changes)
    return {key: value for key, value in row.items() if value is not None}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "expected one or more"),
        ([_rule_row(example=None)], "example must be a non-empty string"),
        ([_rule_row(counter_example="")], "counter_example must be a non-empty string"),
        ([_rule_row(service_id="99")], "not in the catalog"),
        ([_rule_row(kind="regex")], "kind must be one of"),
        ([_rule_row(confidence="sure")], "confidence must be one of"),
        ([_rule_row(pattern="[0-9")], "does not compile"),
        ([_rule_row(aid_prefix="A0")], "has no aid_prefix"),
        ([_rule_row(colour="red")], "unknown keys"),
        ([_rule_row(), _rule_row()], "appears twice"),
        ([_rule_row(generate={"prefixes": ["1"]})], "generate must be"),
        ([_rule_row(generate={"prefixes": ["12345"], "length": 4})], "prefixes"),
        (
            [
                _rule_row(generate={"prefixes": ["1"], "length": 4}),
                _rule_row(id="other", generate={"prefixes": ["1"], "length": 4}),
            ],
            "two digits generators",
        ),
        ([_rule_row(kind="emv_cpm", pattern=None, aid_prefix="a0000003")], "upper-case hex"),
    ],
)
def test_malformed_rule_tables_are_refused(rows: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _build_table({"rule": rows}, load_catalog())
