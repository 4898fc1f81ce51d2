"""CORS on the HTTP API: a host app's page on another origin calls the API of a replica whose
TRACKTALK_ALLOWED_ORIGINS names that origin — in Chromium, as a front-end developer would — and a
page on an origin not named cannot. What the preflights and answers carry is checked header by
header with httpx."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.env import ConfigError

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "written", ["https://app.example/", "app.example", "https://app.example/page", "*", "https://*.example"]
)
def test_an_allowed_origin_that_no_browser_sends_fails_at_start(written: str) -> None:
    """The list is compared exactly with `Origin`: a trailing slash or a pattern would never match."""
    env = {"DATABASE_URL": "postgresql://unused/unused", "TRACKTALK_SECRET": "s" * 32}
    with pytest.raises(ConfigError, match=r"^TRACKTALK_ALLOWED_ORIGINS: .* is not an origin"):
        Settings.from_env({**env, "TRACKTALK_ALLOWED_ORIGINS": f"http://localhost:3000, {written}"})
    fine = Settings.from_env(
        {**env, "TRACKTALK_ALLOWED_ORIGINS": "http://localhost:3000, https://app.example"}
    )
    assert fine.allowed_origins == ("http://localhost:3000", "https://app.example")
