"""Headless Chromium (Debian's, never a downloaded one) driven by Playwright; a live worker; a webhook sink.

Every test leaves a screenshot in artifacts/screenshots/ and fails on any browser console
error or page error, except the ones a test declares with `console.expect(...)`.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from shared.settings import Settings
from tests.browser.support import PASSWORD, Sink, create_operator

CHROMIUM = os.environ.get("ORDERFLOW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Webhooks may go to the loopback sink; one attempt, so a failure gives up at once."""
    return msgspec.structs.replace(settings, webhook_allow_nets="127.0.0.0/8", webhook_retry_schedule="0")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium; Playwright never downloads one."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


class Console:
    """Errors the page logged; a test names the ones it provokes on purpose."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.expected: list[re.Pattern[str]] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def on_page_error(self, error: Any) -> None:
        self.errors.append(f"page error: {error}")

    def expect(self, pattern: str) -> None:
        """One console error matching `pattern` is part of the test (a refused request)."""
        self.expected.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        left = list(self.errors)
        for pattern in self.expected:
            match = next((e for e in left if pattern.search(e)), None)
            assert match is not None, f"expected a console error matching {pattern.pattern!r}; got {self.errors}"
            left.remove(match)
        return left


@pytest.fixture
async def console() -> Console:
    """The current test's browser console."""
    return Console()


@pytest.fixture
async def page(server: Any, browser: Browser, console: Console,
               request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A fresh browser context and page; screenshot and console check afterwards.

    It needs `server` so that it closes first: a live page whose server went away would log
    a failed reconnect of its event stream.
    """
    context = await browser.new_context(viewport={"width": 1440, "height": 1000}, locale="en-US",
                                        timezone_id="UTC")
    context.set_default_timeout(15_000)
    page = await context.new_page()
    page.on("console", console.on_console)
    page.on("pageerror", console.on_page_error)
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    await context.close()
    assert console.unexpected() == [], "the browser logged errors"


@pytest.fixture
async def operator(pool: Any) -> str:
    """An operator called ops."""
    return await create_operator(pool)


async def log_in(page: Page, base: str, name: str = "ops", password: str = PASSWORD) -> None:
    """Through the login form, as a person would."""
    await page.goto(base + "/dashboard/")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", password)
    await page.click("form.login button[type=submit]")


@pytest.fixture
async def worker(consumer: Any) -> AsyncIterator[Any]:
    """The ingest consumer running in the background, with its heartbeat, like `orderflow worker`."""
    stop = asyncio.Event()

    async def beat() -> None:
        while not stop.is_set():
            await consumer.heartbeat()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    tasks = [asyncio.create_task(consumer.run(stop)), asyncio.create_task(beat())]
    yield consumer
    stop.set()
    await asyncio.gather(*tasks)


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    """A real webhook receiver on loopback."""
    s = await Sink().start()
    yield s
    await s.stop()
