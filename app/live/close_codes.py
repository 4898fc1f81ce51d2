"""Every close code a track socket may get, and the reasons that go with them.

The codes are RFC 6455's where one fits, and 4001 of our own; `docs/protocol.md` tells a client
what to do after each. A reason that asks the client to come back says how (`RESUME`).
"""

from __future__ import annotations

from app.bounds import MAX_FRAME

NORMAL = 1000
"""The client left, or the server closed a socket that did nothing wrong."""
GOING_AWAY = 1001
"""The replica is shutting down: reconnect at once (another replica answers)."""
UNSUPPORTED = 1003
"""A frame that is not JSON text."""
POLICY = 1008
"""Refused: bad token, unknown or invisible track, too many sockets, access taken away."""
TOO_BIG = 1009
"""A client frame over the size limit."""
INTERNAL = 1011
"""An unforeseen failure on the server (it is logged)."""
TRY_AGAIN = 1013
"""Too slow to keep up, or the database is unavailable: reconnect shortly with `since=`."""
TOKEN_EXPIRED = 4001
"""The access token expired: reconnect with a fresh one and `since=`."""

RESUME = "reconnect with since=<last seq>"
"""What a client that was closed should do next, in every reason that asks it to come back."""

SHUTTING_DOWN = f"server shutting down: {RESUME}"
TOO_SLOW = f"too slow: {RESUME}"
EXPIRED = f"token expired: {RESUME} and a fresh token"
DATABASE_DOWN = f"database unavailable: {RESUME} in a few seconds"
SERVER_FAILED = f"server error (logged): {RESUME}"
TRACK_NOT_FOUND = "track not found"
ACCESS_REVOKED = "track not found: access to it was taken away"
USER_GONE = "invalid token: its user does not exist"

WHAT_TO_DO = {
    NORMAL: f"the socket ended (the client left, or a proxy closed it): {RESUME} if still wanted",
    GOING_AWAY: f"the replica is shutting down: {RESUME} at once (another replica takes it)",
    UNSUPPORTED: "the client sent a frame that is not JSON text: fix the client",
    POLICY: "refused (the reason says why: invalid token, track not found, …): do not retry as is",
    TOO_BIG: f"the client sent a frame over {MAX_FRAME} bytes: fix the client",
    INTERNAL: f"the server failed unforeseen (logged): {RESUME} after a backoff",
    TRY_AGAIN: f"too slow to keep up, or the database is unavailable: {RESUME} (back off if it repeats)",
    TOKEN_EXPIRED: f"the access token expired: {RESUME} at once, with a fresh token",
}
"""What a client does after each close code (the AsyncAPI document's x-close-codes)."""
