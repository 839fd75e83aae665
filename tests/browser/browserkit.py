"""What the browser tests drive besides the running system (support/system.py): a landing page, Chromium, and step
screenshots."""

from __future__ import annotations

import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright
from support.stubs import StubHandler, StubServer
from support.tracker import UA_DESKTOP

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, not a browser build of Playwright's own (which would need a download).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # root in CI, and no user namespaces in containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]


def chromium_path() -> str:
    """ADCLICK_TEST_CHROMIUM (a path or a name on PATH), else Debian's /usr/bin/chromium; a missing browser fails
    the test, in CI and out of it, and says what to install."""
    configured = os.environ.get("ADCLICK_TEST_CHROMIUM") or CHROMIUM
    path = shutil.which(configured) or configured
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"the browser tests need Chromium at {path}: install Debian's package (apt-get install chromium) "
            "or point ADCLICK_TEST_CHROMIUM at another Chromium executable",
            pytrace=False,
        )
    return path


def artifacts_root() -> Path:
    """Where screenshots go: ADCLICK_TEST_ARTIFACTS, else test-artifacts/browser/ in the repository (gitignored)."""
    configured = os.environ.get("ADCLICK_TEST_ARTIFACTS")
    return Path(configured).resolve() if configured else REPO / "test-artifacts" / "browser"


class Shots:
    """Numbered full-page screenshots of each step in one directory per test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.taken: list[Path] = []

    def __call__(self, page: Page, step: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{re.sub(r'[^a-z0-9]+', '-', step.lower()).strip('-')}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@dataclass
class Tab:
    """One browser tab in a fresh context, with what it showed that a person would notice."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def chromium_tab() -> Iterator[Tab]:
    """Debian's Chromium, headless, with one tab that looks like a person's desktop browser (not a bot) in UTC."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            context = browser.new_context(
                user_agent=UA_DESKTOP,  # HeadlessChrome is (rightly) classified as a bot by the tracker
                timezone_id="UTC",
                locale="en-US",
                viewport={"width": 1280, "height": 900},
            )
            context.set_default_timeout(15_000)
            tab = Tab(context.new_page())

            def dialog_opened(dialog: Dialog) -> None:
                tab.dialogs.append(dialog.message)
                dialog.dismiss()

            tab.page.on("dialog", dialog_opened)
            tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
            yield tab
            context.close()
        finally:
            browser.close()


class Landing(StubServer):
    """The advertiser's landing page: a tiny HTTP server that remembers every path it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(StubHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                body = b"<!doctype html><title>Spring sale</title><h1>Welcome to the spring sale</h1>"
                self.reply(body, "text/html; charset=utf-8")

        super().__init__(Handler)


def fill_macros(template: str, **values: str) -> str:
    """An advertiser's side of a postback URL: each `{macro}` replaced by its value, percent-encoded."""
    return re.sub(r"\{(\w+)\}", lambda m: urllib.parse.quote(values[m.group(1)], safe=""), template)
