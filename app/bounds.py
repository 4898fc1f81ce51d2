"""Every bound in one place: the most tracktalk takes from a client, reads in one go or keeps,
each with why. (Limits an operator sets are settings: app/config.py.)"""

from __future__ import annotations

MAX_BIGINT = 2**63 - 1
"""PostgreSQL's bigint: the largest id (comments, notifications, users) or seq there is."""

MAX_TRACK_ID = 200
"""Longest track id, in characters, that a route or a socket takes."""

MAX_TOPIC = 256
"""Longest topic, in characters, that a socket subscribes to (a track's is `track:` and its id)."""

MAX_TOPICS = 100
"""Topics one /api/ws socket may hold (subscribed, or being subscribed): a page with a track, a
forum and a few live tables needs far fewer."""

SUBSCRIBE_BURST = 120
"""Subscribes one /api/ws socket may send at once (a page's 100 topics fit, with room for a few
it drops and takes again) ..."""
SUBSCRIBE_RATE = 20.0
"""... and per second after that: each costs the database a question, and a replay."""

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
"""Events read from the log per query when replaying or catching up, at most ..."""
EVENT_PAGE_BYTES = 1024 * 1024
"""... and bytes of their messages (at least one event, whatever its size): a page of 500
events of 400 KB each is not read, nor written to a resuming socket, at once."""

MAX_TRACKS_LISTED = 500
"""Tracks GET /api/tracks lists at most."""

MAX_TITLE = 200
"""Longest forum thread title the API accepts, in characters (after trimming): a line of a list,
not a post (the database allows 1,000, for SQL writers)."""

MAX_SLUG = 64
"""Longest forum category slug a route takes (forum_categories.slug allows no more)."""

THREAD_PAGE = 50
"""Threads per page of GET /api/forum/categories/{slug}/threads unless `limit` says otherwise ..."""
MAX_THREAD_PAGE = 200
"""... and at most."""

POST_PAGE = 100
"""Posts per page of GET /api/forum/threads/{thread_id}/posts unless `limit` says otherwise ..."""
MAX_POST_PAGE = 500
"""... and at most."""

MAX_CATEGORIES_LISTED = 500
"""Forum categories GET /api/forum/categories lists at most."""
