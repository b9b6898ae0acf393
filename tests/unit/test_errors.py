"""The error table: every code has a status, every error class a documented code, and the docs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kessai.adapters.repository
import kessai.connectors.base  # noqa: F401  (registers FlowNotSupported)
from kessai.domain import errors
from kessai.domain.errors import (
    ERROR_CODES,
    InvalidRequest,
    KessaiError,
    RateLimited,
)

ERRORS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def documented_families() -> dict[str, int]:
    """The error families and their usual statuses, as the module docstring draws the tree."""
    assert errors.__doc__ is not None
    rows = re.findall(r"^\s*[├└]── (\w+)\s+(\d{3})\s", errors.__doc__, flags=re.MULTILINE)
    return {name: int(status) for name, status in rows}


FAMILIES = documented_families()


def all_subclasses(cls: type[KessaiError]) -> list[type[KessaiError]]:
    found: list[type[KessaiError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(all_subclasses(sub))
    return found


ALL_CLASSES = [KessaiError, *all_subclasses(KessaiError)]


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_code_has_an_error_status_and_a_description(code: str) -> None:
    status, when = ERROR_CODES[code]
    assert re.fullmatch(r"[A-Z][A-Z_]*[A-Z]", code)
    assert isinstance(status, int)
    assert 400 <= status <= 599
    assert isinstance(when, str)
    assert when.strip()
    assert KessaiError("x", code=code).http_status == status


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__qualname__)
def test_every_error_class_has_a_documented_default_code(cls: type[KessaiError]) -> None:
    assert cls.default_code in ERROR_CODES
    error = cls("something went wrong")
    assert error.code == cls.default_code
    assert error.http_status == ERROR_CODES[cls.default_code][0]


def test_the_docstring_tree_is_the_class_tree() -> None:
    assert FAMILIES, "the module docstring no longer draws the error tree"
    in_module = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, KessaiError) and value is not KessaiError
    }
    assert set(FAMILIES) == in_module


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_answers_its_usual_status(name: str) -> None:
    cls = getattr(errors, name)
    assert cls.__bases__ == (KessaiError,), "the tree is flat"
    assert cls("x").http_status == FAMILIES[name]


def test_error_carries_the_envelope_fields() -> None:
    error = RateLimited(
        "locked", code="PASSCODE_LOCKED", field="passCode", retryable=True, retry_after_seconds=30
    )
    assert str(error) == "locked"
    assert (error.code, error.message, error.field) == ("PASSCODE_LOCKED", "locked", "passCode")
    assert error.retryable is True
    assert error.retry_after_seconds == 30
    assert error.http_status == 429
    plain = InvalidRequest("bad")
    assert (plain.field, plain.retryable, plain.retry_after_seconds) == (None, False, None)


def test_an_undocumented_code_is_refused() -> None:
    with pytest.raises(ValueError):
        KessaiError("x", code="NO_SUCH_CODE")


def test_an_undocumented_code_is_refused_under_python_o() -> None:
    program = (
        "from kessai.domain.errors import KessaiError\n"
        "try:\n"
        "    KessaiError('x', code='NO_SUCH_CODE')\n"
        "except Exception:\n"
        "    raise SystemExit(0)\n"
        "raise SystemExit(1)\n"
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", program], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, "an undocumented error code was accepted under -O"


def test_errors_module_imports_no_framework() -> None:
    source = Path(errors.__file__).read_text(encoding="utf-8")
    imports = re.findall(r"^(?:from|import) (\S+)", source, flags=re.MULTILINE)
    assert set(imports) <= {"__future__", "typing"}


# --- docs/errors.md --------------------------------------------------------------------------


def _documented_rows() -> dict[str, int]:
    text = ERRORS_PAGE.read_text(encoding="utf-8")
    rows = re.findall(r"^\|\s*`([A-Z_]+)`\s*\|\s*(\d{3})\s*\|", text, flags=re.MULTILINE)
    return {code: int(status) for code, status in rows}


def test_errors_page_lists_every_code() -> None:
    assert ERRORS_PAGE.is_file(), f"{ERRORS_PAGE} is missing"
    text = ERRORS_PAGE.read_text(encoding="utf-8")
    missing = [code for code in ERROR_CODES if f"`{code}`" not in text]
    assert not missing, f"docs/errors.md does not list {missing}"


def test_errors_page_gives_each_code_its_status() -> None:
    assert ERRORS_PAGE.is_file(), f"{ERRORS_PAGE} is missing"
    documented = _documented_rows()
    wrong = {
        code: (documented.get(code), status)
        for code, (status, _) in ERROR_CODES.items()
        if documented.get(code) != status
    }
    assert not wrong, f"docs/errors.md status differs from ERROR_CODES (doc, code): {wrong}"
