"""Helpers of the browser tests (``tests/test_web.py``): Debian's Chromium found (or the reason it is missing),
launched headless through Playwright's Python API, and everything a page reports that a user would call broken.

Playwright drives the distribution's ``/usr/bin/chromium`` (``executable_path``), so nothing is downloaded: the
``playwright`` wheel carries its driver, and ``make browser`` installs the ``chromium`` package. Without a browser
the tests skip locally with the reason, and fail when ``CI`` is set (CI's setup must have installed it).

>>> require_browser()  # doctest: +SKIP
>>> with launch_chromium() as browser:      # doctest: +SKIP
...     page = browser.new_page()
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Response

# as root, Chromium needs --no-sandbox; the rest keep it from calling home on a machine with no network (each
# refused connection would be a log line at least) and from needing a GPU
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SCREENSHOTS_ENV = "RAGKIT_WEB_SCREENSHOTS"  # a folder: the tests save their screenshots there (docs/web.md)


def chromium_path() -> Path:
    """The browser binary: ``$RAGKIT_CHROMIUM``, else ``chromium`` on PATH, else Debian's ``/usr/bin/chromium``."""
    return Path(os.environ.get("RAGKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python API is not installed (pip install -e '.[dev]')"
    path = chromium_path()
    if not (path.is_file() and os.access(path, os.X_OK)):
        return f"no browser at {path}: run `make browser` (Debian's chromium package) or set RAGKIT_CHROMIUM"
    return None


def require_browser() -> None:
    """Skip with the reason when the browser is missing; under CI (``CI`` set) that is a failure instead,
    so a fresh CI machine whose setup forgot the browser cannot pass by skipping the browser tests."""
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Headless Chromium from :func:`chromium_path`, closed (with Playwright's driver) on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(chromium_path()), headless=True, args=list(CHROMIUM_FLAGS)
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageLog:
    """What one page reported: console messages of type error, uncaught exceptions, requests that failed at
    the network level and responses with a 4xx/5xx status (as ``"STATUS METHOD URL"``)."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_responses: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.console_errors.append(message.text)

        def response(answer: Response) -> None:
            if answer.status >= 400:
                self.error_responses.append(f"{answer.status} {answer.request.method} {answer.url}")

        def failed(request: Request) -> None:
            self.failed_requests.append(f"{request.method} {request.url}: {request.failure}")

        page.on("console", console)
        page.on("pageerror", lambda error: self.page_errors.append(f"{error.name}: {error.message}"))
        page.on("requestfailed", failed)
        page.on("response", response)

    def problems(self, allowed_status: tuple[int, ...] = ()) -> list[str]:
        """Everything logged that a user would call broken, except responses (and the console line Chromium
        writes for each, "Failed to load resource: ... status of N") whose status is in ``allowed_status``."""
        statuses = "|".join(map(str, allowed_status))
        allowed = re.compile(rf"status of ({statuses})\b") if allowed_status else None
        console = [text for text in self.console_errors if not (allowed and allowed.search(text))]
        responses = [line for line in self.error_responses if int(line.split()[0]) not in allowed_status]
        return [
            *(f"console error: {text}" for text in console),
            *(f"page error: {text}" for text in self.page_errors),
            *(f"request failed: {text}" for text in self.failed_requests),
            *(f"response: {text}" for text in responses),
        ]


def screenshot(page: Page, name: str) -> None:
    """Save ``page`` as ``$RAGKIT_WEB_SCREENSHOTS/<name>.png`` when that variable names a folder (nothing otherwise):
    ``bench/web_screenshots.py`` makes docs/web/'s pictures this way."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
