"""The browser client /client/tracktalk.js, in headless chromium, on a page that loads nothing else.

The page is a host app's, served from another origin (a port of its own): it imports the module
from tracktalk's server, as another site would, and logs what the feed hands it. Against two real
replicas behind nginx it must see every event, in order, across a replica killed under it. What
a real server never does on demand (duplicates, a gap, each close code at the right moment) comes
from a scripted WebSocket server that the test drives frame by frame.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from app import wire

pytestmark = pytest.mark.timeout(180)


DTS = Path(__file__).resolve().parents[2] / "app" / "client" / "tracktalk.d.ts"


def dts_interfaces() -> dict[str, set[str]]:
    """Each `export interface` of tracktalk.d.ts, and its property names."""
    found = {}
    for name, body in re.findall(r"^export interface (\w+) \{\n(.*?)^\}", DTS.read_text(), re.M | re.S):
        found[name] = set(re.findall(r"^  (?:readonly )?(\w+)\??:", body, re.M))
    return found


WIRE_TYPES: dict[str, type[msgspec.Struct]] = {
    "Comment": wire.Comment,
    "TrackMetrics": wire.TrackMetrics,
    "LikeState": wire.LikeState,
    "Notification": wire.Notification,
    "NotificationPage": wire.NotificationPage,
    "Counters": wire.Counters,
    "Typing": wire.Typing,
    "SocketConnected": wire.SocketConnected,
    "Subscribed": wire.Subscribed,
    "SubscribeError": wire.SubscribeError,
    "Unsubscribed": wire.Unsubscribed,
    "Subscribe": wire.Subscribe,
    "Unsubscribe": wire.Unsubscribe,
    "TopicTyping": wire.TopicTyping,
    "Post": wire.Post,
    "Thread": wire.Thread,
    "Category": wire.Category,
    "PostLikeState": wire.PostLikeState,
    "ThreadCounters": wire.ThreadCounters,
    **{struct.__name__: struct for struct in get_args(wire.ForumMessage)},
    "RowInserted": wire.RowInserted,
    "RowUpdated": wire.RowUpdated,
    "RowDeleted": wire.RowDeleted,
    **{
        struct.__name__ if struct is not wire.Error else "ErrorMessage": struct
        for struct in get_args(wire.ServerMessage)
    },
}


def test_the_declarations_have_every_field_of_every_wire_type() -> None:
    interfaces = dts_interfaces()
    for name, struct in WIRE_TYPES.items():
        fields = set(struct.__struct_fields__)
        if struct.__struct_config__.tag is not None:
            fields.add("type")
        assert interfaces.get(name) == fields, f"tracktalk.d.ts: {name} differs from app/wire.py"
    unions = re.search(r"^export type ServerMessage =(.*?);", DTS.read_text(), re.M | re.S)
    assert unions is not None
    members = set(re.findall(r"\| (\w+)", unions.group(1)))
    assert members == {n for n, s in WIRE_TYPES.items() if s in get_args(wire.ServerMessage)}
    forum = re.search(r"^export type ForumMessage = \((.*?)\)", DTS.read_text(), re.M | re.S)
    assert forum is not None
    assert set(re.findall(r"\| (\w+)", forum.group(1))) == {s.__name__ for s in get_args(wire.ForumMessage)}
