"""What the guides say of their own measurements agrees with their tables, and the README's walk
through works as written (its commands are checked where they run: tests/system/test_cli.py)."""

from __future__ import annotations

import re

from tests.support.processes import ROOT

SCALING = ROOT / "docs" / "scaling.md"


DASH = "\u2013"
"""The en dash of the guides' ranges."""


def row(text: str, starts: str) -> list[int]:
    """The figures of the table row that starts with `starts`, before any `[…]` of another day."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {starts}"))
    cell = line.split("|")[2].split("[")[0]
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", cell)]


def test_scaling_quotes_its_own_table() -> None:
    text = SCALING.read_text()
    hot = row(text, "one hot track")
    quoted = re.findall(rf"~([\d,]+){DASH}([\d,]+) comments/s", text)
    assert quoted, "docs/scaling.md: no hot-track range in the prose"
    for low, high in quoted:  # every range it gives for one track is the measured one
        assert (int(low.replace(",", "")), int(high.replace(",", ""))) == (
            round(min(hot), -2),
            round(max(hot), -2),
        ), (low, high, hot)
    notifying = row(text, "tracktalk, 1 / 16 / 32")  # 1, 16, 32 writers
    best = row(text, "tracktalk, best")[0]  # 4 writers
    without = row(text, "the same triggers without")  # 4, 16, 32 writers
    gains = [without[0] / best - 1, without[1] / notifying[1] - 1, without[2] / notifying[2] - 1]
    said = re.search(rf"\+(\d+){DASH}(\d+) % here at 4{DASH}32 writers", text)
    assert said, "docs/scaling.md: no gain of the writers without pg_notify"
    assert (int(said.group(1)), int(said.group(2))) == (round(min(gains) * 100), round(max(gains) * 100))
