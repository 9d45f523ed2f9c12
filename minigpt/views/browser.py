"""Opening a view in a real browser with the network cut off: what the tests and the README's
screenshots do. Debian's chromium (`apt-get install chromium`), driven by Playwright; Playwright's
own browser download is not used."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def chromium() -> Iterator:
    """A headless chromium browser (Playwright's Browser)."""
    executable = find_chromium()
    if executable is None:
        raise ValueError("no chromium on this machine: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_offline(browser, path: Path, viewport: dict | None = None):
    """The page at `path` with every other request blocked, once its figure is drawn. Returns the
    page and what it met: {"errors": console errors and page errors, "blocked": requests refused}."""
    page = browser.new_page(viewport=viewport or {"width": 1000, "height": 760})
    seen: dict[str, list[str]] = {"errors": [], "blocked": []}
    page.on("console", lambda message: seen["errors"].append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))

    def only_the_file(route) -> None:
        if route.request.url == path.as_uri():
            route.continue_()
        else:
            seen["blocked"].append(route.request.url)
            route.abort()

    page.route("**/*", only_the_file)
    page.goto(path.as_uri())
    page.wait_for_selector("#figure .main-svg")
    return page, seen
