"""IDENTIFY-SCANNED-QR-CODE: tell which wallet service a scanned customer code belongs to.

Identification is driven by the table in ``data/code_rules.toml``, one row per rule, each naming its
public source and how far it can be trusted. This module knows two *kinds* of rule and nothing about
any particular wallet, so adding a wallet or correcting a prefix is a data change:

``digits``
    A regular expression the whole code must match. Japanese wallets, Alipay+, WeChat Pay and
    UnionPay's digit code are all plain digit strings told apart by prefix and length.
``emv_cpm``
    An EMVCo consumer-presented QR: Base64 of BER-TLV data that starts with tag 85 "CPV01" and holds
    one or more application templates (tag 61). The rule matches the prefix of an application
    identifier (AID, tag 4F) inside a template, e.g. UnionPay's ``A000000333``.

Rules are tried in file order and the first match wins. Every input either identifies or raises
one of two documented errors; nothing else escapes, whatever the scanner hands us:

* ``InvalidRequest`` (INVALID_FIELD): empty, longer than ``MAX_CODE_LENGTH``, or holding a control
  or whitespace character, i.e. something that is not a scanned code at all;
* ``UnprocessableCode`` (NOT_A_PAYMENT_CODE): a well-formed code that no rule routes, with a message
  saying why (a product barcode, a malformed EMV payload, an unsupported AID...).

The module also holds the sandbox wallets' code generator, fed by the same table, so that the
sandbox can never produce a code the gateway would not recognise.
"""

from __future__ import annotations

import base64
import binascii
import functools
import random
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

from kessai.domain.catalog import Catalog, load_catalog
from kessai.domain.errors import InvalidRequest, UnprocessableCode

RULES_FILE: Final = "code_rules.toml"

DIGITS: Final = "digits"
EMV_CPM: Final = "emv_cpm"
KINDS: Final = frozenset({DIGITS, EMV_CPM})
CONFIDENCES: Final = frozenset({"high", "medium", "medium-low", "low"})

# The longest code we look at, in characters. EMV CPM payloads are well under 400 characters of
# Base64 and digit codes under 40; the bound keeps hostile input from costing anything.
MAX_CODE_LENGTH: Final = 512

# BER-TLV limits. EMV tags are at most 3 bytes and EMV lengths at most 3 bytes (0x82 xx xx);
# CPM payloads nest templates two deep (61 inside the top level, perhaps one more inside that).
MAX_TAG_BYTES: Final = 3
MAX_LENGTH_BYTES: Final = 3
MAX_TLV_DEPTH: Final = 4

# ISO/IEC 7816-5: an AID is a 5-byte registered id (RID) plus up to 11 bytes of extension.
MIN_AID_BYTES: Final = 5
MAX_AID_BYTES: Final = 16

# Every CPM payload starts 85 05 "CPV01" (the payload format indicator), Base64 "hQVDUFYwM...".
CPV01_HEADER: Final = b"\x85\x05CPV01"

# GTIN lengths a shop scanner reads off products, so we can say "that is a product, not a wallet".
_PRODUCT_BARCODES: Final[Mapping[int, str]] = MappingProxyType(
    {8: "EAN-8", 12: "UPC-A", 13: "EAN-13"}
)
_DECIMAL: Final = "0123456789"
# Whitespace, control and format characters (zero-width space, BOM, bidi marks): none is ever part
# of a scanned code, and they are how a wrongly configured scanner (or a hostile caller) shows up.
_FORBIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})
_MAX_RULES: Final = 1000


@dataclass(frozen=True, slots=True)
class DigitsTemplate:
    """How the sandbox draws a digit code: one of ``prefixes``, then random digits to ``length``."""

    prefixes: tuple[str, ...]
    length: int


@dataclass(frozen=True, slots=True)
class EmvTemplate:
    """How the sandbox draws an EMV CPM code: one application template with these values."""

    aid: str  # upper-case hex
    label: str  # tag 50, the application label a wallet would show
    pan_prefix: str
    pan_length: int


@dataclass(frozen=True, slots=True)
class CodeRule:
    """One row of the identification table."""

    rule_id: str
    service_id: str
    kind: str  # DIGITS or EMV_CPM
    # DIGITS: a regular expression the whole code must match. EMV_CPM: an upper-case AID hex prefix.
    pattern: str
    source: str
    confidence: str
    example: str
    counter_example: str
    generate: DigitsTemplate | EmvTemplate | None = None
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind == DIGITS:
            # re.ASCII keeps "\d" from accepting Arabic-Indic or full-width digits.
            object.__setattr__(self, "_regex", re.compile(self.pattern, re.ASCII))

    def matches(self, code: str) -> bool:
        """Tell whether this rule matches a whole scanned code (not whether it wins the table)."""
        if self._regex is not None:
            return self._regex.fullmatch(code) is not None
        try:
            aids = _emv_aids(code)
        except UnprocessableCode:
            return False
        return any(self.matches_aid(aid) for aid in aids)

    def matches_aid(self, aid: str) -> bool:
        """Tell whether an EMV application identifier (upper-case hex) falls under this rule."""
        return self.kind == EMV_CPM and aid.startswith(self.pattern)


@dataclass(frozen=True, slots=True)
class Identification:
    """The answer of ``identify``: which service, by which rule, from which kind of code."""

    service_id: str
    rule_id: str
    kind: str  # DIGITS or EMV_CPM


def identify(code: str) -> Identification:
    """Tell which service a scanned customer code belongs to.

    Raises ``InvalidRequest`` (INVALID_FIELD) for input that cannot be a scanned code and
    ``UnprocessableCode`` (NOT_A_PAYMENT_CODE) for a code no rule routes; never anything else.
    """
    _check_scanned_text(code)
    table = _table()
    for rule in table.digit_rules:
        if rule.matches(code):
            return Identification(rule.service_id, rule.rule_id, DIGITS)
    if _is_decimal(code):
        raise _unmatched_digits(code)
    aids = _emv_aids(code)
    # A co-badged code holds several application templates, listed in the wallet's order of
    # preference; it is routed by the first one that some rule supports.
    for aid in aids:
        for rule in table.emv_rules:
            if rule.matches_aid(aid):
                return Identification(rule.service_id, rule.rule_id, EMV_CPM)
    plural = "s" if len(aids) > 1 else ""
    raise _not_a_payment_code(
        f"EMV payment code with unsupported application AID{plural} {', '.join(aids)}"
    )


def rules() -> tuple[CodeRule, ...]:
    """Return the identification table in the order rules are tried (for docs and tests)."""
    return _table().rules


def generate_code(service_id: str, rng: random.Random, *, emv: bool = False) -> str:
    """Draw a fresh random code in a service's real format (for the sandbox wallets).

    ``emv=True`` asks for an EMV consumer-presented QR payload instead of a digit code. Raises
    ``InvalidRequest`` with UNKNOWN_SERVICE for an id the catalog lacks, and with
    SERVICE_NOT_SUPPORTED when the service has no code of the requested kind.
    """
    service = load_catalog().require(service_id)
    table = _table()
    generators = table.emv_generators if emv else table.digit_generators
    template = generators.get(service.service_id)
    if isinstance(template, EmvTemplate):
        return _generate_emv(template, rng)
    if isinstance(template, DigitsTemplate):
        return _generate_digits(template, rng)
    kind = "EMV consumer-presented" if emv else "digit"
    raise InvalidRequest(
        f"service {service.service_id} ({service.name_en}) has no {kind} code format",
        code="SERVICE_NOT_SUPPORTED",
        field="serviceId",
    )


# --- Input checks and messages -------------------------------------------------------------------


def _check_scanned_text(code: object) -> None:
    # The type check is for callers that skip validation: a non-string must not become a TypeError.
    if not isinstance(code, str) or not code:
        raise _invalid_code("code must be a non-empty string")
    if len(code) > MAX_CODE_LENGTH:
        raise _invalid_code(f"code is longer than {MAX_CODE_LENGTH} characters")
    if code.isascii() and code.isprintable() and " " not in code:
        # Printable ASCII without a space holds no control or whitespace character: the usual
        # case, checked in C instead of character by character.
        return
    for position, char in enumerate(code):
        if char.isspace() or unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise _invalid_code(
                f"code contains a control or whitespace character (U+{ord(char):04X}) "
                f"at position {position}"
            )


def _is_decimal(code: str) -> bool:
    return all(char in _DECIMAL for char in code)


def _unmatched_digits(code: str) -> UnprocessableCode:
    # Only a product barcode is echoed back: an unknown digit string may be a live wallet code we
    # simply lack a rule for, and codes are bearer tokens that must not end up in logs.
    barcode = _PRODUCT_BARCODES.get(len(code))
    if barcode is not None and _gs1_check_digit(code[:-1]) == int(code[-1]):
        return _not_a_payment_code(f"{code} is a product barcode ({barcode}), not a payment code")
    return _not_a_payment_code(f"a {len(code)}-digit code that matches no wallet's format")


def _gs1_check_digit(digits: str) -> int:
    # GS1 weights alternate 3, 1, 3, ... from the digit nearest the check digit.
    total = sum(
        int(digit) * (3 if index % 2 == 0 else 1) for index, digit in enumerate(digits[::-1])
    )
    return -total % 10


def _invalid_code(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="INVALID_FIELD", field="code")


def _not_a_payment_code(message: str) -> UnprocessableCode:
    return UnprocessableCode(message, code="NOT_A_PAYMENT_CODE", field="code")


# --- EMV consumer-presented mode -----------------------------------------------------------------


class TlvError(ValueError):
    """BER-TLV data that is truncated, has an oversized length or tag, or nests too deeply."""


@dataclass(frozen=True, slots=True)
class TlvNode:
    """One BER-TLV data object; ``children`` are parsed when the tag is constructed."""

    tag: str  # upper-case hex, e.g. "9F26"
    value: bytes
    children: tuple[TlvNode, ...] = ()

    @property
    def constructed(self) -> bool:
        """Tell whether the tag marks a template (bit 6 of its first byte)."""
        return bool(int(self.tag[:2], 16) & 0x20)


def parse_tlv(data: bytes) -> tuple[TlvNode, ...]:
    """Parse BER-TLV data into a tree, descending into every constructed data object.

    Handles multi-byte tags and long-form lengths. Raises ``TlvError`` when the data is truncated,
    a length runs past the end of its enclosing data, a tag or length field is longer than EMV
    allows, the indefinite length form is used, or templates nest deeper than ``MAX_TLV_DEPTH``.
    """
    return _parse_objects(bytes(data), depth=0)


def encode_tlv(tag: str, value: bytes) -> bytes:
    """Encode one BER-TLV data object: ``tag`` as hex, the shortest length form, then ``value``."""
    length = len(value)
    if length < 0x80:
        length_field = bytes([length])
    else:
        size = (length.bit_length() + 7) // 8
        length_field = bytes([0x80 | size]) + length.to_bytes(size, "big")
    return bytes.fromhex(tag) + length_field + value


def _parse_objects(data: bytes, depth: int) -> tuple[TlvNode, ...]:
    if depth >= MAX_TLV_DEPTH:
        raise TlvError(f"templates nested more than {MAX_TLV_DEPTH} deep")
    nodes: list[TlvNode] = []
    offset = 0
    while offset < len(data):
        tag, offset = _read_tag(data, offset)
        length, offset = _read_length(data, offset, tag)
        end = offset + length
        if end > len(data):
            raise TlvError(
                f"tag {tag.hex().upper()} declares {length} bytes but only "
                f"{len(data) - offset} remain"
            )
        value = data[offset:end]
        children = _parse_objects(value, depth + 1) if tag[0] & 0x20 else ()
        nodes.append(TlvNode(tag.hex().upper(), value, children))
        offset = end
    return tuple(nodes)


def _read_tag(data: bytes, offset: int) -> tuple[bytes, int]:
    start = offset
    # Low five bits all set: the tag number continues in following bytes while their top bit is set.
    more = data[offset] & 0x1F == 0x1F
    offset += 1
    while more:
        if offset >= len(data):
            raise TlvError(f"truncated tag {data[start:offset].hex().upper()}")
        if offset - start >= MAX_TAG_BYTES:
            raise TlvError(f"tag longer than {MAX_TAG_BYTES} bytes")
        more = bool(data[offset] & 0x80)
        offset += 1
    return data[start:offset], offset


def _read_length(data: bytes, offset: int, tag: bytes) -> tuple[int, int]:
    name = tag.hex().upper()
    if offset >= len(data):
        raise TlvError(f"tag {name} has no length")
    first = data[offset]
    offset += 1
    if first < 0x80:
        return first, offset
    size = first & 0x7F
    if size == 0:
        raise TlvError(f"tag {name} uses the indefinite length form, which EMV forbids")
    if size > MAX_LENGTH_BYTES:
        raise TlvError(f"tag {name} has a {size}-byte length field")
    if offset + size > len(data):
        raise TlvError(f"tag {name} has a truncated length field")
    return int.from_bytes(data[offset : offset + size], "big"), offset + size


def _emv_aids(code: str) -> tuple[str, ...]:
    """Return the AIDs of a CPM payload's application templates, or say why it is not one."""
    data = _decode_base64(code)
    if not data.startswith(CPV01_HEADER):
        raise _not_a_payment_code(
            "Base64 data that is not an EMV consumer-presented payload (no 85 'CPV01' header)"
        )
    try:
        nodes = parse_tlv(data)
    except TlvError as exc:
        raise _not_a_payment_code(f"malformed EMV payment code: {exc}") from exc
    templates = [node for node in nodes if node.tag == "61"]
    if not templates:
        raise _not_a_payment_code("EMV payment code without an application template (61)")
    aids: list[str] = []
    for template in templates:
        for child in template.children:
            if child.tag != "4F":
                continue
            if not MIN_AID_BYTES <= len(child.value) <= MAX_AID_BYTES:
                raise _not_a_payment_code(
                    f"EMV payment code with a malformed {len(child.value)}-byte AID"
                )
            aids.append(child.value.hex().upper())
    if not aids:
        raise _not_a_payment_code("EMV payment code without an application identifier (4F)")
    return tuple(aids)


def _decode_base64(code: str) -> bytes:
    # QR encoders sometimes drop the trailing "=" padding; it carries no data, so restore it.
    padded = code + "=" * (-len(code) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _not_a_payment_code(
            "code matches no wallet's format: neither a digit code nor a Base64 EMV payment code"
        ) from exc


# --- Code generation (sandbox wallets) -----------------------------------------------------------


def _generate_digits(template: DigitsTemplate, rng: random.Random) -> str:
    prefix = rng.choice(template.prefixes)
    return prefix + _random_digits(rng, template.length - len(prefix))


def _generate_emv(template: EmvTemplate, rng: random.Random) -> str:
    body = template.pan_prefix + _random_digits(
        rng, template.pan_length - len(template.pan_prefix) - 1
    )
    pan = body + str(_luhn_check_digit(body))
    # Tag 5A is BCD, two digits a byte; an odd-length PAN is padded with a trailing F nibble.
    pan_bcd = bytes.fromhex(pan + "F" * (len(pan) % 2))
    application = b"".join(
        (
            encode_tlv("4F", bytes.fromhex(template.aid)),
            encode_tlv("50", template.label.encode("ascii")),
            encode_tlv("5A", pan_bcd),
            encode_tlv("9F26", rng.randbytes(8)),  # application cryptogram
        )
    )
    payload = encode_tlv("85", b"CPV01") + encode_tlv("61", application)
    return base64.b64encode(payload).decode("ascii")


def _random_digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice(_DECIMAL) for _ in range(count))


def _luhn_check_digit(digits: str) -> int:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return -total % 10


# --- The table -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RuleTable:
    rules: tuple[CodeRule, ...]
    digit_rules: tuple[CodeRule, ...]
    emv_rules: tuple[CodeRule, ...]
    digit_generators: Mapping[str, DigitsTemplate | EmvTemplate]
    emv_generators: Mapping[str, DigitsTemplate | EmvTemplate]


@functools.cache
def _table() -> _RuleTable:
    resource = resources.files("kessai") / "data" / RULES_FILE
    return _build_table(tomllib.loads(resource.read_text(encoding="utf-8")), load_catalog())


def _build_table(document: Mapping[str, Any], catalog: Catalog) -> _RuleTable:
    """Build and check the identification table from a parsed ``code_rules.toml`` document.

    Raises ``ValueError`` naming the offending rule for a malformed table: a programmer error that
    must stop start-up rather than misroute a payment.
    """
    rows = document.get("rule")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{RULES_FILE}: expected one or more [[rule]] tables")
    if len(rows) > _MAX_RULES:
        raise ValueError(f"{RULES_FILE}: {len(rows)} rules, more than {_MAX_RULES}")
    table = tuple(_rule_from_row(index, row, catalog) for index, row in enumerate(rows))
    seen: set[str] = set()
    digit_generators: dict[str, DigitsTemplate | EmvTemplate] = {}
    emv_generators: dict[str, DigitsTemplate | EmvTemplate] = {}
    for rule in table:
        if rule.rule_id in seen:
            raise ValueError(f"{RULES_FILE}: rule id {rule.rule_id!r} appears twice")
        seen.add(rule.rule_id)
        if rule.generate is None:
            continue
        generators = digit_generators if rule.kind == DIGITS else emv_generators
        if rule.service_id in generators:
            raise ValueError(
                f"{RULES_FILE}: service {rule.service_id} has two {rule.kind} generators"
            )
        generators[rule.service_id] = rule.generate
    return _RuleTable(
        rules=table,
        digit_rules=tuple(rule for rule in table if rule.kind == DIGITS),
        emv_rules=tuple(rule for rule in table if rule.kind == EMV_CPM),
        digit_generators=MappingProxyType(digit_generators),
        emv_generators=MappingProxyType(emv_generators),
    )


_RULE_KEYS: Final = frozenset(
    {
        "id",
        "service_id",
        "kind",
        "pattern",
        "aid_prefix",
        "source",
        "confidence",
        "example",
        "counter_example",
        "generate",
    }
)
_HEX: Final = re.compile(r"(?:[0-9A-F]{2})+", re.ASCII)


def _rule_from_row(index: int, row: object, catalog: Catalog) -> CodeRule:
    where = f"{RULES_FILE}: rule #{index + 1}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a table")
    unknown = set(row) - _RULE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    rule_id = _text(row, "id", where)
    where = f"{RULES_FILE}: rule {rule_id!r}"
    service_id = _text(row, "service_id", where)
    if service_id not in catalog:
        raise ValueError(f"{where}: service_id {service_id!r} is not in the catalog")
    kind = _text(row, "kind", where)
    confidence = _text(row, "confidence", where)
    if confidence not in CONFIDENCES:
        raise ValueError(f"{where}: confidence must be one of {sorted(CONFIDENCES)}")
    generate: DigitsTemplate | EmvTemplate | None
    if kind == DIGITS:
        pattern = _text(row, "pattern", where)
        _check_regex(pattern, where)
        generate = _digits_template(row.get("generate"), where)
    elif kind == EMV_CPM:
        pattern = _text(row, "aid_prefix", where)
        if not _HEX.fullmatch(pattern):
            raise ValueError(f"{where}: aid_prefix must be upper-case hex bytes")
        generate = _emv_template(row.get("generate"), pattern, where)
    else:
        raise ValueError(f"{where}: kind must be one of {sorted(KINDS)}")
    wrong_key = "aid_prefix" if kind == DIGITS else "pattern"
    if wrong_key in row:
        raise ValueError(f"{where}: a {kind} rule has no {wrong_key}")
    return CodeRule(
        rule_id=rule_id,
        service_id=service_id,
        kind=kind,
        pattern=pattern,
        source=_text(row, "source", where),
        confidence=confidence,
        example=_text(row, "example", where),
        counter_example=_text(row, "counter_example", where),
        generate=generate,
    )


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern, re.ASCII)
    except re.error as exc:
        raise ValueError(f"{where}: pattern does not compile: {exc}") from exc


def _digits_template(value: object, where: str) -> DigitsTemplate | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"prefixes", "length"}:
        raise ValueError(f"{where}: generate must be {{ prefixes = [...], length = N }}")
    prefixes = value["prefixes"]
    length = value["length"]
    if not isinstance(length, int) or not 1 <= length <= MAX_CODE_LENGTH:
        raise ValueError(f"{where}: generate.length must be 1..{MAX_CODE_LENGTH}")
    if not _is_digit_list(prefixes) or any(len(prefix) > length for prefix in prefixes):
        raise ValueError(f"{where}: generate.prefixes must be digit strings up to length")
    return DigitsTemplate(tuple(prefixes), length)


def _emv_template(value: object, aid_prefix: str, where: str) -> EmvTemplate | None:
    if value is None:
        return None
    keys = {"aid", "label", "pan_prefix", "pan_length"}
    if not isinstance(value, dict) or set(value) != keys:
        raise ValueError(f"{where}: generate must have exactly {sorted(keys)}")
    aid, label = _text(value, "aid", where), _text(value, "label", where)
    pan_prefix, pan_length = _text(value, "pan_prefix", where), value["pan_length"]
    if not _HEX.fullmatch(aid) or not aid.startswith(aid_prefix):
        raise ValueError(f"{where}: generate.aid must be upper-case hex under {aid_prefix}")
    if not MIN_AID_BYTES <= len(aid) // 2 <= MAX_AID_BYTES:
        raise ValueError(f"{where}: generate.aid must be {MIN_AID_BYTES}-{MAX_AID_BYTES} bytes")
    if not label.isascii() or len(label) > 16:
        raise ValueError(f"{where}: generate.label must be at most 16 ASCII characters")
    # EMV tag 5A holds at most 19 digits; the last one is the Luhn check digit we add.
    if not isinstance(pan_length, int) or not len(pan_prefix) < pan_length <= 19:
        raise ValueError(f"{where}: generate.pan_length must exceed the prefix and be <= 19")
    if not _is_digit_list([pan_prefix]):
        raise ValueError(f"{where}: generate.pan_prefix must be digits")
    return EmvTemplate(aid, label, pan_prefix, pan_length)


def _is_digit_list(value: object) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, str) and item and _is_decimal(item) for item in value)
    )


def _text(row: Mapping[str, object], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key} must be a non-empty string")
    return value
