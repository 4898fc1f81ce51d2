"""The WebSocket protocol as an AsyncAPI 3.0.0 document, made from the wire types (app/wire.py).

One channel, the track socket, with its query parameters; one message per `type`, whose payload
is msgspec's JSON Schema of the struct (AsyncAPI's default schema format is a superset of JSON
Schema draft 07). The document describes the server: it sends the ServerMessage union and
receives the ClientMessage one. Served at /schema/asyncapi.json; docs/protocol.md says the same
for people.
"""

from __future__ import annotations

import functools
from typing import Any, get_args

import msgspec

from app import wire
from app.bounds import MAX_FRAME
from app.live.close_codes import WHAT_TO_DO

ASYNCAPI_VERSION = "3.0.0"
CHANNEL = "trackSocket"
"""The channel's key in the document."""
SCHEMAS = "#/components/schemas/{name}"


def _members(union: Any) -> list[type[msgspec.Struct]]:
    return list(get_args(union)) or [union]


def _tag(struct: type[msgspec.Struct]) -> str:
    tag = struct.__struct_config__.tag
    assert isinstance(tag, str), f"{struct.__name__} has no tag"
    return tag


def _summary(struct: type[msgspec.Struct]) -> str:
    return (struct.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _message(struct: type[msgspec.Struct]) -> dict[str, Any]:
    return {
        "name": _tag(struct),
        "title": struct.__name__,
        "summary": _summary(struct),
        "contentType": "application/json",
        "payload": {"$ref": SCHEMAS.format(name=struct.__name__)},
    }


def _operation(action: str, title: str, structs: list[type[msgspec.Struct]]) -> dict[str, Any]:
    return {
        "action": action,
        "title": title,
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{_tag(s)}"} for s in structs],
    }


def document() -> dict[str, Any]:
    """The AsyncAPI document of the track socket."""
    sent = _members(wire.ServerMessage)
    received = _members(wire.ClientMessage)
    _, schemas = msgspec.json.schema_components(sent + received, ref_template=SCHEMAS)
    messages = {_tag(struct): _message(struct) for struct in sent + received}
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "tracktalk",
            "version": str(wire.PROTOCOL),
            "description": (
                "Realtime time-coded comments: the WebSocket of a track, on the same host as this "
                "document. Durable events carry `seq`, the track's event number (contiguous from 1, "
                "the same on every replica), and `tag`, random, made with the event; resume after a drop "
                "with `since=<last seq>&tag=<its tag>`."
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
            }
        },
        "operations": {
            "sendTrackMessages": _operation("send", "Messages the server sends", sent),
            "receiveClientMessages": _operation("receive", "Messages a client may send", received),
        },
        "components": {"schemas": schemas, "messages": messages},
    }


@functools.cache
def document_json() -> bytes:
    """The document as JSON (made once)."""
    return msgspec.json.encode(document())
