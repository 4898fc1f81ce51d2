"""The browser the system tests drive: Debian's chromium, through Playwright."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium, driven through Playwright (never a downloaded browser)."""


EXPECT_MS = 15_000
"""How long each of the browser tests' `expect(...)` waits unless it says otherwise. Playwright's own
default is 5 s, which a loaded two-core CI machine can miss (a page's actions wait 15 s already:
each test's context sets that)."""


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
