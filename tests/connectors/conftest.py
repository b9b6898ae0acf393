"""Fixtures of the connector tier: contract fakes on 127.0.0.1 and connectors pointed at them.

There is no pytest-asyncio: each test drives its coroutines with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from .fakes.alipayplus import AlipayPlusFake
from .fakes.paypay import PayPayFake
from .fakes.server import FakeServer
from .fakes.wechatpay import WeChatPayFake

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one coroutine on a fresh event loop."""
    return asyncio.run(coro)


@pytest.fixture
def paypay_fake() -> Iterator[tuple[PayPayFake, FakeServer]]:
    fake = PayPayFake()
    with FakeServer(fake) as server:
        yield fake, server


@pytest.fixture
def alipay_fake() -> Iterator[tuple[AlipayPlusFake, FakeServer]]:
    fake = AlipayPlusFake()
    with FakeServer(fake) as server:
        yield fake, server


@pytest.fixture
def wechat_fake() -> Iterator[tuple[WeChatPayFake, FakeServer]]:
    fake = WeChatPayFake()
    with FakeServer(fake) as server:
        yield fake, server
