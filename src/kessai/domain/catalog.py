"""The service catalog: every wallet service Kessai knows, read from ``data/services.toml``.

The catalog is data rather than code so that adding a wallet, or retiring one, is an edit to one
TOML file. A malformed file is a programmer error: loading it raises ``ValueError`` at start-up
instead of answering requests with a half-read catalog.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType
from typing import Any, Final, TypeVar

from kessai.domain.errors import InvalidRequest

SERVICES_FILE: Final = "services.toml"

_SERVICE_ID: Final = re.compile(r"[0-9]{2}", re.ASCII)
_PROVIDER: Final = re.compile(r"[a-z][a-z0-9_]*", re.ASCII)
# A bound on the file, so a runaway edit is caught at load rather than rendered on every terminal.
MAX_SERVICES: Final = 100

_T = TypeVar("_T")

_STR_KEYS: Final = ("service_id", "name", "name_en", "provider")
_BOOL_KEYS: Final = ("active", "supports_customer_code", "supports_merchant_qr")


@dataclass(frozen=True, slots=True)
class Service:
    """One wallet service, as the catalog describes it."""

    service_id: str
    # Display name for clerks and receipts, Japanese where the service has one (d払い, 楽天ペイ).
    name: str
    name_en: str
    # The connector that talks to this service's provider.
    provider: str
    # False once the service has ended: still recognised, no longer offered for new payments.
    active: bool
    # REQUEST: the customer shows a code and the terminal scans it.
    supports_customer_code: bool
    # GET-QR-CODE: the terminal shows a QR code and the customer scans it.
    supports_merchant_qr: bool


@dataclass(frozen=True, slots=True)
class Catalog:
    """An immutable set of services, ordered and keyed by ``service_id``."""

    services: tuple[Service, ...]
    _by_id: Mapping[str, Service] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.services, key=lambda service: service.service_id))
        by_id: dict[str, Service] = {}
        for service in ordered:
            if not _SERVICE_ID.fullmatch(service.service_id):
                raise ValueError(f"serviceId {service.service_id!r} is not two digits")
            if service.service_id in by_id:
                raise ValueError(f"serviceId {service.service_id} appears twice in the catalog")
            by_id[service.service_id] = service
        # The dataclass is frozen; these two writes are its construction, not a mutation.
        object.__setattr__(self, "services", ordered)
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))

    def get(self, service_id: str) -> Service | None:
        """Return the service with this id, or ``None`` when the catalog has none."""
        return self._by_id.get(service_id)

    def require(self, service_id: str) -> Service:
        """Return the service with this id, or raise ``InvalidRequest`` (UNKNOWN_SERVICE)."""
        service = self._by_id.get(service_id)
        if service is None:
            raise InvalidRequest(
                f"serviceId {service_id!r} names no service in the catalog",
                code="UNKNOWN_SERVICE",
                field="serviceId",
            )
        return service

    def __iter__(self) -> Iterator[Service]:
        """Iterate over the services in ``service_id`` order."""
        return iter(self.services)

    def __len__(self) -> int:
        """Return the number of services."""
        return len(self.services)

    def __contains__(self, service_id: object) -> bool:
        """Tell whether a service with this id exists."""
        return service_id in self._by_id


@functools.cache
def load_catalog() -> Catalog:
    """Return the catalog shipped in ``kessai/data/services.toml`` (read once, then cached)."""
    resource = resources.files("kessai") / "data" / SERVICES_FILE
    return parse_catalog(tomllib.loads(resource.read_text(encoding="utf-8")))


def parse_catalog(document: Mapping[str, Any]) -> Catalog:
    """Build a catalog from a parsed TOML document of ``[[service]]`` tables.

    Raises ``ValueError`` naming the offending row when the document is malformed: unknown or
    missing keys, wrong types, or ids that are not two digits or appear twice.
    """
    rows = document.get("service")
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{SERVICES_FILE}: expected one or more [[service]] tables")
    if len(rows) > MAX_SERVICES:
        raise ValueError(f"{SERVICES_FILE}: {len(rows)} services, more than {MAX_SERVICES}")
    return Catalog(tuple(_service_from_row(index, row) for index, row in enumerate(rows)))


def _service_from_row(index: int, row: object) -> Service:
    where = f"{SERVICES_FILE}: service #{index + 1}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a table")
    # Unknown keys are refused because a misspelt flag would otherwise silently take no effect.
    unknown = set(row) - set(_STR_KEYS) - set(_BOOL_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    strings = {key: _value(row, key, str, where) for key in _STR_KEYS}
    flags = {key: _value(row, key, bool, where) for key in _BOOL_KEYS}
    if not all(strings.values()):
        raise ValueError(f"{where}: empty text value")
    if not _PROVIDER.fullmatch(strings["provider"]):
        raise ValueError(f"{where}: provider {strings['provider']!r} is not a lower-case name")
    return Service(
        service_id=strings["service_id"],
        name=strings["name"],
        name_en=strings["name_en"],
        provider=strings["provider"],
        active=flags["active"],
        supports_customer_code=flags["supports_customer_code"],
        supports_merchant_qr=flags["supports_merchant_qr"],
    )


def _value(row: Mapping[str, object], key: str, kind: type[_T], where: str) -> _T:
    value = row.get(key)
    if not isinstance(value, kind):
        raise ValueError(f"{where}: {key} must be a {kind.__name__}, got {value!r}")
    return value
