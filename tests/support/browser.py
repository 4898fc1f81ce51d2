"""The browser the system tests drive: Debian's chromium, through Playwright."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium, driven through Playwright (never a downloaded browser)."""


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
