"""Headless Chromium driven by Playwright, for the playground's browser test and its screenshots.

Playwright's own browser download cannot work here (no internet), so it drives Debian's `chromium` package
(`make browser` installs it) through `executable_path`. The flags keep Chromium off the network it cannot reach:
without them it opens background connections at start-up, which this machine refuses many at a time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class NoChromium(RuntimeError):
    """No Chromium on this machine: the message says how to install it."""


def chromium_path() -> str:
    """Where Chromium is: `$CHROMIUM`, else `chromium` on the PATH.

    Raises:
        NoChromium: neither exists.
    """
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise NoChromium(
            "no Chromium on this machine: `make browser` installs Debian's `chromium` package "
            "(apt-get install chromium), or set CHROMIUM=/path/to/chrome"
        )
    return found


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium for the duration of the block."""
    path = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
