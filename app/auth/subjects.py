"""The host's own ids of its users: a token of the identity provider whose user claim is not a
users.id (`auth0|…`, a UUID, `user_…`) names its user by `users.external_id`.

`Subjects.user_id(subject, proposed_username)` finds the user, and, with TRACKTALK_JWT_PROVISION=1,
makes one on first sight (tracktalk.provision_user: one row however many replicas see the subject
first at once). What it found is remembered for `REMEMBER` seconds, as the verifier remembers a
token: a user's sockets and requests, and the fresh tokens the identity provider gives them, cost
no lookup meanwhile. A subject that has no user is never remembered (one made a moment later is
found at once). `forget(user_id)` drops what was remembered of a user found gone (deleted since),
so that the next request looks again (and, with provisioning, makes the user anew); a subject
given to another user (`UPDATE users SET external_id = …`) is followed within `REMEMBER` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from psycopg_pool import AsyncConnectionPool

from app.auth.claims import TokenError
from app.data import users

REMEMBER = 60.0
"""Seconds a subject's user id is taken again without asking the database."""
_REMEMBERED = 10_000
"""Subjects remembered at most (the oldest half is forgotten beyond)."""


class UnknownUser(TokenError):
    """The token is valid, but no user has its subject as external_id, and none is made for it."""


class Subjects:
    """users.external_id -> users.id for one replica, remembered; users made on first sight when
    `provision`."""

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        provision: bool,
        user_claim: str = "sub",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._provision = provision
        self._claim = user_claim[:20]  # a close reason holds 123 bytes at most
        self._clock = clock
        self._known: dict[str, tuple[int, float]] = {}
        """subject -> (its user id, until when it is taken again unchecked)"""

    async def user_id(self, subject: str, proposed_username: object) -> int:
        """The id of the user whose external_id is `subject` (made now, named after
        `proposed_username`, when provisioning); UnknownUser when there is none."""
        now = self._clock()
        known = self._known.get(subject)
        if known is not None and known[1] > now:
            return known[0]
        async with self._pool.connection() as conn:
            found = await users.by_external_id(conn, subject)
            if found is None and self._provision:
                found = await users.provision(conn, subject, users.mentionable(proposed_username))
        if found is None:
            raise UnknownUser(
                f"unknown user: no users.external_id is this token's `{self._claim}`; "
                "add the user, or set TRACKTALK_JWT_PROVISION=1"
            )
        if len(self._known) >= _REMEMBERED:
            for old in list(self._known)[: _REMEMBERED // 2]:
                del self._known[old]
        self._known[subject] = (found, now + REMEMBER)
        return found

    def forget(self, user_id: int) -> bool:
        """Drop what is remembered of `user_id` (found gone); whether anything was."""
        gone = [subject for subject, (known, _) in self._known.items() if known == user_id]
        for subject in gone:
            del self._known[subject]
        return bool(gone)
