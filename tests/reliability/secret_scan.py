"""A scanner for secrets left in clear in files: the database, its write-ahead log, the logs.

A secret is looked for as it is and in the simple encodings a careless line of code would
produce: UTF-16, hex (either case), Base64 (standard and URL-safe, at any alignment inside a
longer Base64 text), percent-encoding and JSON string escaping. A 4-digit passCode is too short
to look for alone (any four digits occur somewhere in a database by chance), so it is looked for
next to its name: ``passCode": "1234``, ``passcode=1234`` and the like.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

# Shorter secrets are looked for only as they are: their encodings would be short enough to
# occur by chance in megabytes of hashes and random identifiers.
MIN_ENCODED_LENGTH: Final = 8
MIN_BASE64_LENGTH: Final = 12


@dataclass(frozen=True)
class Finding:
    """One secret found: which, in what form, where, and at which byte."""

    secret: str
    form: str
    where: str
    offset: int

    def __str__(self) -> str:
        return f"{self.secret} ({self.form}) in {self.where} at byte {self.offset}"


def _base64_cores(raw: bytes, alphabet: str) -> list[bytes]:
    """The Base64 characters that encode ``raw`` alone, at each of the three alignments.

    Inside a longer Base64 text, ``raw`` starts at some byte offset; only the output characters
    whose six bits all come from ``raw`` are fixed by it. Those are computed here for an offset
    of 0, 1 and 2 (mod 3), so that a secret is found wherever it sits in the encoded text.
    """
    cores = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw + b"\0\0")
        first = -(-8 * shift // 6)  # the first character that starts inside raw
        last = (8 * (shift + len(raw))) // 6  # one past the last that ends inside raw
        core = encoded[first:last]
        if alphabet == "urlsafe":
            core = core.translate(bytes.maketrans(b"+/", b"-_"))
        cores.append(core)
    return cores


def forms_of(secret: str) -> dict[str, list[bytes]]:
    """Every byte string that would reveal ``secret``, by the name of its encoding."""
    raw = secret.encode("utf-8")
    forms: dict[str, list[bytes]] = {"as is": [raw]}
    if len(secret) >= MIN_ENCODED_LENGTH:
        forms["utf-16"] = [secret.encode("utf-16-le"), secret.encode("utf-16-be")]
        forms["hex"] = [raw.hex().encode(), raw.hex().upper().encode()]
        escaped = json.dumps(secret)[1:-1].encode()
        if escaped != raw:
            forms["json-escaped"] = [escaped]
        percent = quote(secret, safe="").encode()
        if percent != raw:
            forms["percent-encoded"] = [percent, percent.lower()]
    if len(raw) >= MIN_BASE64_LENGTH:
        forms["base64"] = _base64_cores(raw, "standard")
        forms["base64url"] = _base64_cores(raw, "urlsafe")
    return forms


def passcode_pattern(passcode: str) -> re.Pattern[bytes]:
    """``passCode`` (in any spelling) followed closely by these four digits."""
    if not re.fullmatch(r"[0-9]{4}", passcode):
        raise ValueError("a passCode is 4 digits")
    return re.compile(rb"(?i)pass[_-]?code[^0-9A-Za-z]{0,12}" + passcode.encode() + rb"(?![0-9])")


def scan(
    blob: bytes,
    where: str,
    secrets: Mapping[str, str],
    passcodes: Iterable[str] = (),
) -> list[Finding]:
    """Every occurrence of every secret (named by its key in ``secrets``) in ``blob``."""
    found: list[Finding] = []
    lowered = blob.lower()
    for name, secret in secrets.items():
        for form, needles in forms_of(secret).items():
            for needle in needles:
                # Hex and percent-encoding are case-insensitive by nature.
                haystack = lowered if form in ("hex", "percent-encoded") else blob
                probe = needle.lower() if haystack is lowered else needle
                offset = haystack.find(probe)
                if offset >= 0:
                    found.append(Finding(name, form, where, offset))
                    break
    for passcode in passcodes:
        match = passcode_pattern(passcode).search(blob)
        if match is not None:
            found.append(Finding(f"passCode {passcode}", "next to its name", where, match.start()))
    return found


def scan_files(
    paths: Iterable[Path], secrets: Mapping[str, str], passcodes: Iterable[str] = ()
) -> list[Finding]:
    """:func:`scan` over the bytes of each existing file."""
    codes = list(passcodes)
    found: list[Finding] = []
    for path in paths:
        if path.exists():
            found.extend(scan(path.read_bytes(), path.name, secrets, codes))
    return found
