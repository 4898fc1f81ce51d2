"""The WebSocket protocol as an AsyncAPI 3.0.0 document, made from the wire types (app/wire.py).

Two channels: the track socket, with its query parameters, and /api/ws, one socket of many topics.
One message per `type` and channel, whose payload is msgspec's JSON Schema of the struct
(AsyncAPI's default schema format is a superset of JSON Schema draft 07); a message of a topic on
/api/ws is the track socket's with `topic` added (its schema: the same, `topic` required; a live
table's, LiveRowMessage, has `topic` of its own). The
document describes the server: on the track socket it sends the ServerMessage union and receives
the ClientMessage one; on /api/ws it sends TopicSocketMessage's and the topics' messages, and
receives TopicClientMessage's. Served at /schema/asyncapi.json; docs/protocol.md says the same for
people.
"""

from __future__ import annotations

import functools
from typing import Any, get_args

import msgspec

from app import wire
from app.bounds import MAX_FRAME, MAX_TOPICS
from app.live.close_codes import WHAT_TO_DO

ASYNCAPI_VERSION = "3.0.0"
CHANNEL = "trackSocket"
"""The track socket's key in the document."""
TOPICS_CHANNEL = "topicSocket"
"""/api/ws's key in the document."""
TOPICS_PREFIX = "topics."
"""/api/ws's messages in components/messages: `topics.<type>` (a `connected` of each socket)."""
SCHEMAS = "#/components/schemas/{name}"
_TOPIC_EVENTS = (
    wire.NewComment,
    wire.CommentEdited,
    wire.CommentDeleted,
    wire.CommentLiked,
    wire.TrackMetricsChanged,
    wire.UserTyping,
    wire.Presence,
    wire.Resync,
)
"""The track socket's messages that /api/ws sends as messages of a topic (`topic` added)."""
_FORUM_EVENTS = tuple(get_args(wire.ForumMessage))
"""The forum's messages, which only /api/ws sends (on `thread:{id}` and `category:{slug}`, with
`topic`); their `user_typing` and `presence` are the tracks' (of _TOPIC_EVENTS)."""


def _members(union: Any) -> list[type[msgspec.Struct]]:
    return list(get_args(union)) or [union]


def _tag(struct: type[msgspec.Struct]) -> str:
    tag = struct.__struct_config__.tag
    assert isinstance(tag, str), f"{struct.__name__} has no tag"
    return tag


def _summary(struct: type[msgspec.Struct]) -> str:
    return (struct.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _message(struct: type[msgspec.Struct], schema: str | None = None) -> dict[str, Any]:
    return {
        "name": _tag(struct),
        "title": schema or struct.__name__,
        "summary": _summary(struct),
        "contentType": "application/json",
        "payload": {"$ref": SCHEMAS.format(name=schema or struct.__name__)},
    }


def _operation(action: str, title: str, channel: str, keys: list[str]) -> dict[str, Any]:
    return {
        "action": action,
        "title": title,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{key}"} for key in keys],
    }


def _with_topic(schema: dict[str, Any]) -> dict[str, Any]:
    """A track socket message's schema as /api/ws sends it: `topic` first, and required."""
    properties = {"topic": {"type": "string", "description": "The topic the message is of."}}
    return {
        **schema,
        "properties": {**properties, **schema["properties"]},
        "required": ["topic", *schema.get("required", [])],
    }


def document() -> dict[str, Any]:
    """The AsyncAPI document of the track socket and of /api/ws."""
    sent = _members(wire.ServerMessage)
    received = _members(wire.ClientMessage)
    topics_own = _members(wire.TopicSocketMessage)
    topics_received = _members(wire.TopicClientMessage)
    live_rows = _members(wire.LiveRowMessage)
    _, schemas = msgspec.json.schema_components(
        sent + received + topics_own + topics_received + list(_FORUM_EVENTS) + live_rows, ref_template=SCHEMAS
    )
    for struct in _TOPIC_EVENTS + _FORUM_EVENTS:
        schemas["Topic" + struct.__name__] = _with_topic(schemas[struct.__name__])
    for struct in _FORUM_EVENTS:
        del schemas[struct.__name__]  # sent only with `topic`
    messages = {_tag(struct): _message(struct) for struct in sent + received}
    topic_messages = {
        TOPICS_PREFIX + _tag(struct): _message(struct)
        for struct in topics_own + topics_received
        if struct not in (wire.Error, wire.Mention, wire.NotificationMessage)
    }
    topic_messages |= {
        TOPICS_PREFIX + _tag(s): _message(s, "Topic" + s.__name__) for s in _TOPIC_EVENTS + _FORUM_EVENTS
    }
    topic_messages |= {TOPICS_PREFIX + _tag(s): _message(s) for s in live_rows}  # `topic` in their own
    shared = {"error": wire.Error, "mention": wire.Mention, "notification": wire.NotificationMessage}
    topics_sent = [TOPICS_PREFIX + _tag(s) for s in topics_own if s not in shared.values()]
    topics_sent += [*shared, *(TOPICS_PREFIX + _tag(s) for s in _TOPIC_EVENTS + _FORUM_EVENTS)]
    topics_sent += [TOPICS_PREFIX + _tag(s) for s in live_rows]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "tracktalk",
            "version": str(wire.PROTOCOL),
            "description": (
                "Realtime time-coded comments: the WebSocket of a track, and one WebSocket of many topics "
                "(/api/ws), on the same host as this document. Durable events carry `seq`, their topic's "
                "event number (contiguous from 1, the same on every replica; a track's topic is "
                "`track:{track_id}`), and `tag`, random, made with the event; resume after a drop with "
                "`since=<last seq>&tag=<its tag>` (the track socket's query, or each subscribe of /api/ws)."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            CHANNEL: {
                "address": "/api/ws/track/{track_id}",
                "title": "A track's live events",
                "description": (
                    "On connect the server sends `connected`, then (with `since`) every durable event "
                    "after it or `resync`, then live messages. A refused socket is accepted and closed "
                    "with 1008 and a reason before anything is sent. Client frames are JSON text of at "
                    f"most {MAX_FRAME} bytes."
                ),
                "parameters": {"track_id": {"description": "The track's id."}},
                "messages": {tag: {"$ref": f"#/components/messages/{tag}"} for tag in messages},
                "bindings": {
                    "ws": {
                        "bindingVersion": "0.1.0",
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "The access token (JWT). Without one the socket is refused (1008) unless the server allows anonymous sockets.",
                                },
                                "since": {
                                    "type": "string",
                                    "pattern": "^[0-9]{1,18}$",
                                    "description": "The last seq the client has: every durable event after it is sent first, or `resync`.",
                                },
                                "tag": {
                                    "type": "string",
                                    "pattern": "^[0-9a-f]{1,32}$",
                                    "description": "With `since`: the tag of the client's event at that seq. When the server's event at that seq has another tag (a database failover lost the client's), the server sends `resync` instead of a replay.",
                                },
                            },
                        },
                    }
                },
                "x-close-codes": {str(code): meaning for code, meaning in sorted(WHAT_TO_DO.items())},
            },
            TOPICS_CHANNEL: {
                "address": "/api/ws",
                "title": "Many topics on one socket",
                "description": (
                    "On connect the server sends `connected`; the client subscribes to topics "
                    "(`track:{track_id}`, `thread:{id}`, `category:{slug}`, a live table's), at most "
                    f"{MAX_TOPICS}, each answered `subscribed` (then, with `since`, every durable event "
                    "after it or `resync`, then live messages) or `subscribe_error`. Every message of a topic "
                    "has `topic` added, first; a track's are the track socket's. `mention` and `notification` "
                    "come once per socket. A subscription whose user lost access ends with `unsubscribed` "
                    "and a `reason`; the socket keeps its other topics. A refused socket is accepted and "
                    f"closed with 1008 and a reason. Client frames are JSON text of at most {MAX_FRAME} bytes."
                ),
                "messages": {
                    key: {"$ref": f"#/components/messages/{key}"}
                    for key in [*topics_sent, *(TOPICS_PREFIX + _tag(s) for s in topics_received)]
                },
                "bindings": {
                    "ws": {
                        "bindingVersion": "0.1.0",
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "The access token (JWT). Without one the socket is refused (1008) unless the server allows anonymous sockets, which may subscribe to public topics only.",
                                },
                            },
                        },
                    }
                },
                "x-close-codes": {str(code): meaning for code, meaning in sorted(WHAT_TO_DO.items())},
            },
        },
        "operations": {
            "sendTrackMessages": _operation(
                "send", "Messages the server sends", CHANNEL, [_tag(s) for s in sent]
            ),
            "receiveClientMessages": _operation(
                "receive", "Messages a client may send", CHANNEL, [_tag(s) for s in received]
            ),
            "sendTopicMessages": _operation(
                "send", "Messages the server sends on /api/ws", TOPICS_CHANNEL, topics_sent
            ),
            "receiveTopicClientMessages": _operation(
                "receive",
                "Messages a client may send on /api/ws",
                TOPICS_CHANNEL,
                [TOPICS_PREFIX + _tag(s) for s in topics_received],
            ),
        },
        "components": {"schemas": schemas, "messages": messages | topic_messages},
    }


@functools.cache
def document_json() -> bytes:
    """The document as JSON (made once)."""
    return msgspec.json.encode(document())
