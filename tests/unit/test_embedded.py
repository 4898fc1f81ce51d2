"""The embedded PostgreSQL: first start, reuse, stop, stale servers, signals and the CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from app.dev import embedded
from app.dev.embedded import EmbeddedError, EmbeddedPostgres, find_bindir

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks processes through /proc"),
    pytest.mark.skipif(find_bindir() is None, reason="no PostgreSQL binaries (see README)"),
]


def test_url_for_and_not_started(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "never")
    with pytest.raises(EmbeddedError, match="with"):
        _ = pg.url
    pg._port = 5555
    assert pg.url_for("a b") == "postgresql://tracktalk@127.0.0.1:5555/a%20b"
    assert not (tmp_path / "never").exists()


def test_socket_folder_is_dropped_when_too_long() -> None:
    assert embedded._socket_dir_setting(Path("/tmp/x"), 5432) == '"/tmp/x"'
    assert embedded._socket_dir_setting(Path("/tmp/" + "x" * 90), 5432) == ""


def test_has_binaries_says_no_when_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "find_bindir", lambda: None)
    assert embedded.main(["--has-binaries"]) == 1
