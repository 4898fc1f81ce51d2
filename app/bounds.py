"""Every bound in one place: the most tracktalk takes from a client, reads in one go or keeps,
each with why. (Limits an operator sets are settings: app/config.py.)"""

from __future__ import annotations

MAX_BIGINT = 2**63 - 1
"""PostgreSQL's bigint: the largest id (comments, notifications, users) or seq there is."""

MAX_TRACK_ID = 200
"""Longest track id, in characters, that a route or a socket takes."""

MAX_TAG = 32
"""Longest `tag=` on a socket (an event's tag: 16 hex digits as the database makes them)."""

MAX_CONTENT = 5000
"""Longest comment the API accepts, in characters (after trimming)."""

MAX_FRAME = 4096
"""Largest frame a client may send on a socket, in bytes; a bigger one closes it with 1009."""

MAX_BODY = 64 * 1024
"""Largest request body the API reads, in bytes."""

MAX_USER_ID_DIGITS = 18
"""Longest user id a token may name, in digits (a positive bigint; 18 digits always fit)."""

MAX_EXTERNAL_ID = 255
"""Longest external id (the host identity provider's subject: users.external_id) a token may name,
in characters (Auth0's, Keycloak's, Clerk's and Cognito's are under 70)."""

MAX_JWKS_BODY = 1024 * 1024
"""Largest JWKS read from the identity provider, in bytes."""

COMMENT_PAGE = 100
"""Comments per page of GET /api/tracks/{track_id}/comments unless `limit` says otherwise ..."""
MAX_COMMENT_PAGE = 500
"""... and at most."""

NOTIFICATION_PAGE = 50
"""Notifications per page of GET /api/notifications unless `limit` says otherwise ..."""
MAX_NOTIFICATION_PAGE = 200
"""... and at most."""

EVENT_PAGE = 500
"""Events read from the log per query when replaying or catching up."""

MAX_TRACKS_LISTED = 500
"""Tracks GET /api/tracks lists at most."""
