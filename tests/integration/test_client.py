"""The browser client /client/tracktalk.js, in headless chromium, on a page that loads nothing else.

The page is a host app's, served from another origin (a port of its own): it imports the module
from tracktalk's server, as another site would, and logs what the feed hands it. Against two real
replicas behind nginx it must see every event, in order, across a replica killed under it. What
a real server never does on demand (duplicates, a gap, each close code at the right moment) comes
from a scripted WebSocket server that the test drives frame by frame.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support.host_app import HostApp
from tests.support.processes import Replica

pytestmark = pytest.mark.timeout(180)


async def test_the_files_are_served_for_other_sites_with_their_types_and_answer_head(
    pair: list[Replica], host_app: HostApp
) -> None:
    async with httpx.AsyncClient(base_url=pair[0].http, timeout=10) as client:
        for name, media_type in [
            ("tracktalk.js", "text/javascript"),
            ("tracktalk.d.ts", "application/typescript"),
        ]:
            answer = await client.get(f"/client/{name}", headers={"Origin": host_app.http})
            assert answer.status_code == 200
            assert answer.headers["content-type"].split(";")[0] == media_type
            assert answer.headers["access-control-allow-origin"] == "*"
            assert answer.headers["cache-control"] == "no-cache"
            assert answer.headers["x-content-type-options"] == "nosniff"
            again = await client.get(f"/client/{name}", headers={"If-None-Match": answer.headers["etag"]})
            assert (again.status_code, again.content) == (304, b"")
            head = await client.head(f"/client/{name}")
            assert (head.status_code, head.content) == (200, b"")
            assert head.headers["content-length"] == str(len(answer.content))
            assert head.headers["etag"] == answer.headers["etag"]
        assert (await client.get("/client/other.js")).status_code == 404
