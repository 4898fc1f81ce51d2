"""The protocol's version, where a client meets it: `connected.protocol`, the two schema
documents, /client/v1/ (with long cache headers, and a module that finds its server from there)
and CHANGELOG.md. (How a TypeScript project uses the .d.ts: tests/system/test_typescript.py.)"""

from __future__ import annotations

import re
from typing import get_args

import pytest

from app import wire
from app.wire import PROTOCOL
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(120)


CHANGELOG = ROOT / "CHANGELOG.md"


def test_the_changelog_says_what_the_current_version_has() -> None:
    text = CHANGELOG.read_text()
    versions = re.findall(r"^## Protocol (\d+)", text, re.M)
    assert versions and int(versions[0]) == PROTOCOL, "CHANGELOG.md: the newest section comes first"
    current = text.split(f"## Protocol {PROTOCOL}", 1)[1].split("\n## ", 1)[0]
    for struct in get_args(wire.ServerMessage):
        tag = struct.__struct_config__.tag
        assert f"`{tag}`" in current, f"CHANGELOG.md, protocol {PROTOCOL}: no `{tag}`"
    for name in ("`protocol`", f"/client/v{PROTOCOL}/tracktalk.js", "since=", "TRACKTALK_ALLOWED_ORIGINS"):
        assert name in current, f"CHANGELOG.md, protocol {PROTOCOL}: nothing about {name}"
    assert "(CHANGELOG.md)" in (ROOT / "README.md").read_text()
    assert "CHANGELOG.md" in (ROOT / "docs" / "protocol.md").read_text()
