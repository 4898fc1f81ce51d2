"""The protocol as the repository states it: /schema/asyncapi.json and docs/protocol.md.

The AsyncAPI document is checked against what a real replica sends: sockets on a track, every
kind of message provoked, each frame validated with a JSON Schema validator against the
document's payload for its `type` (closed: a field the document does not name fails too).
docs/protocol.md is checked for every route, close code and variable the code has, and its JSON
examples against the same document.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from collections.abc import Iterator

import pytest
from litestar.exceptions import LitestarDeprecationWarning

from app.config import Settings
from app.handlers.sockets import PATH as SOCKET_PATH
from app.handlers.topic_sockets import PATH as TOPICS_PATH
from app.live.close_codes import WHAT_TO_DO
from app.main import create_app
from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(120)


DOC = ROOT / "docs" / "protocol.md"


def doc_text() -> str:
    assert DOC.exists(), "docs/protocol.md is missing"
    return DOC.read_text()


def routes() -> Iterator[str]:
    """`METHOD /path` of every route the app serves (demo routes included)."""
    with warnings.catch_warnings():  # built only to list its routes: Litestar's notes do not matter here
        warnings.simplefilter("ignore", LitestarDeprecationWarning)
        app = create_app(Settings(database_url="postgresql://unused/unused", secret="x" * 32, demo=True))
    yield f"WS {SOCKET_PATH}{{track_id}}"  # served in front of Litestar (app/main.py)
    yield f"WS {TOPICS_PATH}"  # so is the socket of many topics
    for route in app.http.routes:
        if route.path.startswith("/schema") and route.path != "/schema/asyncapi.json":
            continue  # Litestar's OpenAPI pages
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        methods = sorted(getattr(route, "methods", set()) - {"OPTIONS", "HEAD"}) or ["WS"]
        for method in methods:
            yield f"{method} {path}"


def test_the_doc_names_every_route_close_code_and_variable() -> None:
    text = doc_text()
    for route in routes():
        assert f"`{route}`" in text, f"docs/protocol.md does not describe `{route}`"
    for code in WHAT_TO_DO:
        assert re.search(rf"^\| `{code}` ", text, re.M), f"docs/protocol.md: no row for close code {code}"
    used = set(
        re.findall(
            r'"((?:TRACKTALK|DATABASE)_[A-Z0-9_]+)"',
            "".join(p.read_text() for p in (ROOT / "app").rglob("*.py")),
        )
    )
    for name in used:
        assert f"`{name}`" in text, f"docs/protocol.md does not explain {name}"


def test_the_readme_links_the_protocol_and_nothing_points_outside_the_repository() -> None:
    assert "(docs/protocol.md)" in (ROOT / "README.md").read_text()
    outside_link = "shared" + "/"  # not written whole, or this file would point outside itself
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    outside = [
        f"{name}:{n}"
        for name in files.split()
        if (ROOT / name).is_file() and not name.endswith(".png")
        for n, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
        if outside_link in line
    ]
    assert outside == []
