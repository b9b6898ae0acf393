"""Fixtures of the console's browser tests: one server, Chromium, a fresh shop per test.

Chromium is Debian's (/usr/bin/chromium), driven headless by Playwright; it reaches nothing but
127.0.0.1. Screenshots of the main pages are taken on every run; with KESSAI_SCREENSHOTS=1 they
replace the ones in docs/screenshots/ (see docs/console.md), otherwise they go to a scratch folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from .support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    SCREENSHOTS,
    Provisioner,
    Register,
    Server,
    Shop,
    start_server,
)

VIEWPORT = {"width": 1280, "height": 860}
# Tests that need a terminal of their own (totals, CSV, filters, terminal actions).
SPARE_TERMINALS = 4


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The gateway with its console, on a fresh database."""
    running = start_server(tmp_path_factory.mktemp("console"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="package")
def provisioner(server: Server) -> Iterator[Provisioner]:
    """Makes merchants, terminals and users; spare terminals are made ahead."""
    made = Provisioner(server.database_url)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="package")
def shop(provisioner: Provisioner) -> Shop:
    """The shop most tests share: each test makes payments of its own (fresh transKeys)."""
    made = provisioner.shop()
    provisioner.prepare_terminals(made.merchant_id, SPARE_TERMINALS)
    return made


@pytest.fixture
def http(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client on the gateway."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="package")
def register(server: Server, shop: Shop) -> Iterator[Register]:
    """The shared shop's terminal, logged in once (one device per mid)."""
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        yield Register(client, shop.terminal).login()


@pytest.fixture
def own_register(http: httpx.Client, shop: Shop, provisioner: Provisioner) -> Register:
    """A terminal of the shared shop that no other test uses, logged in."""
    return Register(http, provisioner.spare_terminal(shop.merchant_id)).login()


@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's driver (shipped in the wheel; no browser download)."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """Debian's Chromium, headless."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test does)")
    launched = playwright_driver.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture
def context(browser: Browser, server: Server) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) that may only reach our server."""
    made = browser.new_context(
        base_url=server.base_url,
        viewport=VIEWPORT,
        accept_downloads=True,
        # A merchant's browser in Japan. The console's language does not follow the browser:
        # Japanese is the default whatever it asks for, English is a remembered switch.
        locale="ja-JP",
        timezone_id="Asia/Tokyo",
    )
    made.set_default_timeout(10_000)
    # Anything but 127.0.0.1 is refused, so a test can never depend on the network.
    made.route(
        lambda url: not url.startswith("http://127.0.0.1") and not url.startswith("data:"),
        lambda route: route.abort(),
    )
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    """A tab of the fresh profile."""
    return context.new_page()


@pytest.fixture(scope="package")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Page, str], None]:
    """Save a full-page screenshot as NAME.png: to docs/screenshots/ when asked to.

    They change with every run (dates, generated ids), so an ordinary test run leaves the
    documentation's copies alone; ``KESSAI_SCREENSHOTS=1`` refreshes them.
    """
    if os.environ.get("KESSAI_SCREENSHOTS") == "1":
        target_dir = SCREENSHOTS
        target_dir.mkdir(parents=True, exist_ok=True)
    else:
        target_dir = tmp_path_factory.mktemp("screenshots")

    def take(target: Page, name: str) -> None:
        target.screenshot(path=str(target_dir / f"{name}.png"), full_page=True)

    return take
