"""app/live/frames.py: the frames a message's sockets get."""

from __future__ import annotations

import json

from app.live.frames import Frames, compact
from app.live.topics import prefix

SPACED = (
    b'{"seq": 7, "tag": "80beef13507e7327", "type": "row_inserted", "row": {"price": 0.12345678901234567890123,'
    b' "big": 123456789012345678901234567890, "name": "caf\xc3\xa9: \\"x\\", y", "n": null, "ok": true, "t": 4.0}}'
)


def test_a_frame_carries_the_message_without_jsonbs_spaces_and_with_every_digit() -> None:
    frames = Frames(7, SPACED, prefix("book_requests"))
    plain, tagged = frames.form(tagged=False), frames.form(tagged=True)
    body = plain[4:]  # a 2-byte header and a 16-bit length: 126 <= size < 65536
    assert plain[1] == 126 and len(body) == int.from_bytes(plain[2:4], "big")
    assert b'": ' not in body.replace(b'caf\xc3\xa9: \\"x\\", y', b"") and len(body) < len(SPACED)
    assert json.loads(body) == json.loads(SPACED)
    assert b"0.12345678901234567890123" in body and b"123456789012345678901234567890" in body
    assert tagged.endswith(body[1:]) and json.loads(tagged[4:])["topic"] == "book_requests"


def test_a_restricted_variant_is_compacted_too_and_a_compact_message_is_left_as_it_is() -> None:
    frames = Frames(
        1,
        b'{"type": "skip"}',
        prefix("track:t1"),
        restricted=b'{"type": "comment_moderated", "id": 1}',
        author=3,
    )
    assert frames.form(tagged=False)[2:] == b'{"type":"skip"}'
    assert frames.form(tagged=False, restricted=True)[2:] == b'{"type":"comment_moderated","id":1}'
    already = b'{"type":"presence","listening":3}'
    assert compact(already) is already
    broken = b'{"type": "skip", '
    assert compact(broken) is broken  # sent as it came, never an exception in the fan-out
