"""One time format everywhere: RFC 3339 in UTC with `Z`, microseconds as six digits, left out
when they are zero — over HTTP and on the socket alike, whatever the database's TimeZone.

The database of this module runs in Asia/Kolkata (+05:30), as a DBA's may; a comment whose time
has no microseconds and one whose microseconds end in zeros (to_json would write `.00001`) are
written by SQL, and each time of each kind of message is compared with the same time over HTTP.
"""

from __future__ import annotations

import re

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.timeout(120)


FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def test_the_protocol_doc_states_the_format_and_its_examples_keep_it() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    assert "RFC 3339" in text and "`Z`" in text
    times = re.findall(r'"(?:created_at|last_edited_at|read_at)": "([^"]+)"', text)
    assert times and all(FORMAT.fullmatch(t) for t in times), times
