"""A provider's answer is read only up to ``ANSWER_MAX_BYTES``, by every connector.

Before, connectors read the whole answer (``response.json()``, ``.text``, ``.content``), and
httpx's timeout restarts with every chunk: an endless answer sent quickly was read until the
worker's memory ran out. Now reading stops at the limit and the call counts as unanswered, so
the payment's outcome is UNKNOWN (settled later by a status query), never FAILED.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kessai.connectors.answers import ANSWER_MAX_BYTES, AnswerTooLarge, send
from kessai.connectors.base import ProviderOutcome
from rawhttp import RawServer

from . import test_alipayplus as alipayplus
from . import test_paypay as paypay
from . import test_wechatpay as wechatpay
from .conftest import run
from .fakes.alipayplus import AlipayPlusFake

CHUNK = b"x" * 65536
ENDLESS_BYTES = 64 * 1024 * 1024
# The kernel's socket buffers hold a few megabytes the client never read; anything near the
# endless amount means the client kept reading.
READ_AT_MOST = 8 * 1024 * 1024


class Provider(RawServer):
    """A raw HTTP server whose every answer is of one ``kind``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.sent = 0
        super().__init__()

    def answer(self, conn: socket.socket, head: bytes) -> None:
        """Write an answer of this server's kind."""
        if self.kind in ("flood", "declared"):
            framing = (
                b"Transfer-Encoding: chunked"
                if self.kind == "flood"
                else b"Content-Length: %d" % ENDLESS_BYTES
            )
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s\r\n\r\n" % framing
            )
            if self.kind == "declared":
                # The body comes late: a client that waited for it before refusing would time out.
                time.sleep(10)
            while self.sent < ENDLESS_BYTES:
                piece = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK) if self.kind == "flood" else CHUNK
                conn.sendall(piece)
                self.sent += len(CHUNK)
            return
        if self.kind == "bomb":
            body = gzip.compress(b" " * ENDLESS_BYTES, compresslevel=9)
            headers = b"Content-Encoding: gzip\r\nContent-Type: application/json"
        elif self.kind == "exact":
            # A JSON document of exactly the limit's length.
            body = b'{"pad":"' + b"y" * (ANSWER_MAX_BYTES - 10) + b'"}'
            headers = b"Content-Type: application/json"
        else:  # "latin-1": text in a declared charset
            body = '{"name":"Caf\u00e9"}'.encode("latin-1")
            headers = b"Content-Type: application/json; charset=iso-8859-1"
        conn.sendall(b"HTTP/1.1 200 OK\r\n%s\r\nContent-Length: %d\r\n\r\n" % (headers, len(body)))
        conn.sendall(body)
        self.sent += len(body)


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> Iterator[Provider]:
    server = Provider(request.param)
    yield server
    server.close()


async def _send(url: str) -> Any:
    async with httpx.AsyncClient() as http:
        return await send(http, "POST", url, content=b"{}", timeout=5)


@pytest.mark.parametrize("provider", ["flood", "declared", "bomb"], indirect=True)
def test_an_answer_longer_than_the_limit_is_refused_without_reading_it(provider: Provider) -> None:
    with pytest.raises(AnswerTooLarge):
        run(_send(provider.base_url + "/v2/codes"))
    assert provider.sent < READ_AT_MOST
    assert issubclass(AnswerTooLarge, httpx.HTTPError)  # connectors read it as "no answer"


@pytest.mark.parametrize("provider", ["exact"], indirect=True)
def test_an_answer_of_exactly_the_limit_is_read_whole(provider: Provider) -> None:
    answer = run(_send(provider.base_url + "/"))
    assert answer.status_code == 200
    assert len(answer.content) == ANSWER_MAX_BYTES
    assert json.loads(answer.content)["pad"].startswith("yyy")


@pytest.mark.parametrize("provider", ["latin-1"], indirect=True)
def test_the_text_is_decoded_in_the_declared_charset(provider: Provider) -> None:
    answer = run(_send(provider.base_url + "/"))
    assert json.loads(answer.text) == {"name": "Caf\u00e9"}


# Each connector as its own tests build it, pointed at the raw server.
def _paypay(http: httpx.AsyncClient, provider: Provider) -> Any:
    return paypay.connector(http, provider).create_qr(paypay.qr("300000000001"))


def _alipayplus(http: httpx.AsyncClient, provider: Provider) -> Any:
    connector = alipayplus.connector(http, AlipayPlusFake(), provider)
    return connector.pay(alipayplus.pay("300000000002", "01"))


def _wechatpay(http: httpx.AsyncClient, provider: Provider) -> Any:
    return wechatpay.connector(http, provider).pay(wechatpay.pay("300000000003", "01"))


@pytest.mark.parametrize("provider", ["flood"], indirect=True)
@pytest.mark.parametrize("make", [_paypay, _alipayplus, _wechatpay], ids=lambda f: f.__name__[1:])
def test_every_connector_stops_reading_an_endless_answer_and_calls_it_unknown(
    provider: Provider, make: Any
) -> None:
    async def scenario() -> Any:
        async with httpx.AsyncClient() as http:
            return await make(http, provider)

    result = run(scenario())
    assert result.outcome is ProviderOutcome.UNKNOWN
    assert provider.sent < READ_AT_MOST
