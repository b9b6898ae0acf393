"""A provider's answer, read up to a fixed size.

A provider is a contracted party, but its server (or anything between us and it: a proxy, a
misrouted DNS name, a compromised host) can still send an answer without end. Read whole, such an
answer fills the worker's memory; read as httpx reads, with a timeout that restarts for every
chunk, a fast endless answer is never cut short either. Every connector's call therefore goes
through ``send``, which stops reading at ``ANSWER_MAX_BYTES`` and raises ``AnswerTooLarge``, an
``httpx.HTTPError``: connectors already treat those as "no answer", so the outcome becomes
UNKNOWN and is settled later by a status query, never FAILED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import httpx

# The largest answer any supported provider documents is a few kilobytes (a payment's details,
# or a WeChat Pay XML document); a megabyte leaves room for any of them while keeping a worker's
# memory bounded.
ANSWER_MAX_BYTES: Final = 1 << 20


class AnswerTooLarge(httpx.HTTPError):
    """The provider's answer (after decompression) was longer than the limit."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A provider's complete answer: status, headers and body."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    encoding: str

    @property
    def text(self) -> str:
        """The body as text, in the charset the answer declared (UTF-8 otherwise)."""
        return self.content.decode(self.encoding, errors="replace")


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    limit: int = ANSWER_MAX_BYTES,
    **kwargs: Any,
) -> Answer:
    """Send one request and read its answer, refusing one longer than ``limit`` bytes.

    The limit counts decoded bytes, so a small compressed answer that inflates past it (a
    "zip bomb") is refused as well. A declared ``Content-Length`` over the limit is refused
    before any of the body is read.
    """
    async with client.stream(method, url, **kwargs) as response:
        declared = response.headers.get("content-length", "")
        compressed = "content-encoding" in response.headers
        if declared.isdigit() and int(declared) > limit and not compressed:
            raise AnswerTooLarge(f"the answer declares {declared} bytes; at most {limit} are read")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise AnswerTooLarge(f"the answer is longer than {limit} bytes")
            chunks.append(chunk)
        # httpx falls back to UTF-8 for a charset that is missing or unknown to Python.
        encoding = response.encoding or "utf-8"
        return Answer(response.status_code, response.headers, b"".join(chunks), encoding)
