"""The SQL files' layers: sql/schema.sql and sql/triggers.sql hold what is; the steps between
versions are numbered files of sql/upgrade/, taken above a database's version (the upgrades
themselves: tests/integration/test_upgrade.py)."""

from __future__ import annotations

import re

from app.data.db import SCHEMA_VERSION, UPGRADE_DIR, upgrade_steps


def test_the_steps_are_numbered_files_up_to_this_version_and_taken_above_a_databases() -> None:
    names = sorted(path.name for path in UPGRADE_DIR.iterdir())
    assert all(re.fullmatch(r"\d{3}_[a-z0-9_]+\.sql", name) for name in names), names
    numbers = [int(name[:3]) for name in names]
    assert numbers == sorted(set(numbers)) and max(numbers) == SCHEMA_VERSION
    assert f"VALUES ({SCHEMA_VERSION})" in (UPGRADE_DIR.parent / "triggers.sql").read_text()
    assert upgrade_steps(None) == []
    assert upgrade_steps(SCHEMA_VERSION) == []
    for version in range(2, SCHEMA_VERSION):  # each step after the version, in order
        after = [f"{number:03}" for number in range(version + 1, SCHEMA_VERSION + 1)]
        assert [path.name[:3] for path in upgrade_steps(version)] == after, version


def test_the_re_runnable_files_hold_no_upgrade_step() -> None:
    for name in ("schema.sql", "triggers.sql"):
        text = (UPGRADE_DIR.parent / name).read_text()
        for step in ("ADD COLUMN", "DROP FUNCTION", "DROP TABLE", "DROP CONSTRAINT", "schema_version) <"):
            assert step not in text, f"sql/{name} has an upgrade step ({step}): it goes to sql/upgrade/"
