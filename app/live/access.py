"""The access guard: subscriptions whose user may no longer see their topic end.

A revocation (a track made private, moved or deleted; a user off the team, on it, or deleted; any topic's
tracktalk.revoke_topic) names the topic's or the user's subscriptions; each (user, topic) pair is
asked of the database again (tracktalk.may_see, and whether the user still exists and moderates
the topic), and the refused ones are handed to `on_refused` (the feed ends them: the track socket
is closed with 1008, a subscription of /api/ws is dropped with `unsubscribed`); one whose user
still may see the topic but no longer moderates it (off the team, the album given to another
creator), or now does (on the team, given the album), gets the restricted variants of its events
from then on or no longer, and is told to reload (`on_role_changed`: a `resync`): its client holds
what only moderators see, or lacks it. A revocation may
also pass unheard (before a channel was listened on, while the listener was away): `epoch` moves
then, and the socket handlers ask again for a subscription admitted meanwhile. `answered` waits
for the rechecks asked so far: a topic whose subject is gone tells its subscribers to reload only
once the ones that lost it are gone (app/live/cursors.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from app.backoff import Backoff
from app.data.events import Access
from app.live.connection import Connection
from app.live.hub import Hub

log = logging.getLogger(__name__)

_RECHECK_RETRY = 1.0
"""Seconds before a failed access recheck is tried again, every time (steady, not growing: a
subscription that lost access ends within 5 s of the database's answer)."""


class AccessReader(Protocol):
    """What the guard asks (app/data/events.py's EventLog; an in-memory one in the unit tests)."""

    async def visible(
        self, pairs: list[tuple[int, str]], written_by: list[int] | None = None
    ) -> dict[tuple[int, str], Access]:
        """For each (user, topic) pair: may the user (who must exist) still see the topic, and
        moderate it; `written_by`: the primary's transactions of the revocations (from a fan-out
        node), whose changes the answers must see."""


Refused = Callable[[Connection, str, Access], None]
"""Ends a subscription that lost access (given why: the answer)."""

RoleChanged = Callable[[Connection, str], None]
"""Tells a subscription whose user no longer moderates its topic, or now does, to reload (it holds
what only moderators may see, hidden and held comments, or lacks it)."""


class AccessGuard:
    """Checks again who may see what, as revocations come in."""

    def __init__(
        self, hub: Hub, log: AccessReader, on_refused: Refused, on_role_changed: RoleChanged | None = None
    ) -> None:
        self._hub = hub
        self._log = log
        self._on_refused = on_refused
        self._on_role_changed = on_role_changed
        self.epoch = 0
        """Goes up whenever a revocation may have passed a subscription being admitted: a
        revocation heard, a reconnect, a channel newly listened on. The socket handlers check
        access again when it moved during the admission."""
        self._recheck: set[tuple[int, str]] = set()
        self._written_by: set[int] = set()
        """The primary's transactions of the revocations heard from a fan-out node, not asked yet."""
        self._wake = asyncio.Event()
        self._asked = 0
        """Rechecks asked so far (each call of `recheck` that left pairs to ask) ..."""
        self._answered = 0
        """... and how many of them were answered, their refusals handed over."""
        self._told = asyncio.Event()
        """Set (and replaced) each time rechecks were answered."""

    def moved(self) -> None:
        """A revocation may have passed unheard, or was heard: move the epoch."""
        self.epoch += 1

    def recheck(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Ask again whether each (user, topic) may see it (soon, in one query)."""
        self._recheck.update(pairs)
        if self._recheck:
            self._asked += 1
            self._wake.set()

    async def answered(self) -> None:
        """Return once every recheck asked before this call has been answered and its refusals
        handed over (at once when none is pending). The caller bounds the wait: a database that
        does not answer keeps it waiting."""
        asked = self._asked
        while self._answered < asked:
            await self._told.wait()

    def recheck_topic(self, topic: str, written_by: int | None = None) -> None:
        """Ask again for every subscription of the topic (once the primary's transaction
        `written_by`, a fan-out node's revocation's, is visible there)."""
        if written_by is not None:
            self._written_by.add(written_by)
        self.recheck((conn.user_id, topic) for conn in self._hub.topic_sockets(topic))

    def recheck_user(self, user_id: int, written_by: int | None = None) -> None:
        """Ask again for every subscription of the user (as recheck_topic)."""
        if written_by is not None:
            self._written_by.add(written_by)
        self.recheck((user_id, topic) for conn in self._hub.user_sockets(user_id) for topic in conn.topics)

    def recheck_all(self) -> None:
        """Ask again for every subscription here."""
        self.recheck((conn.user_id, topic) for conn in self._hub.all_sockets() for topic in conn.topics)

    async def enforce(self) -> None:
        """End the subscriptions whose user may no longer see their topic, as revocations come in
        (and follow who moderates what)."""
        recheck_backoff = Backoff(_RECHECK_RETRY, _RECHECK_RETRY)
        while True:
            await self._wake.wait()
            self._wake.clear()
            pairs, self._recheck = list(self._recheck), set()
            asked = self._asked
            written_by, self._written_by = sorted(self._written_by), set()
            try:
                answers = await self._log.visible(pairs, written_by)
            except Exception as exc:
                log.warning("access not checked again (will retry): %s", type(exc).__name__)
                self.recheck(pairs)
                await recheck_backoff.wait()
                continue
            recheck_backoff.reset()
            by_topic: dict[str, dict[int, Access]] = {}
            for (user_id, topic), found in answers.items():
                by_topic.setdefault(topic, {})[user_id] = found
            for topic, users in by_topic.items():
                for conn in self._hub.topic_sockets(topic):
                    if (answer := users.get(conn.user_id)) is None:
                        continue
                    if answer.may_see and (answer.username is not None or not conn.user_id):
                        changed = conn.moderates(topic) != answer.moderator
                        conn.moderate(topic, answer.moderator)
                        if changed and self._on_role_changed is not None:
                            self._on_role_changed(conn, topic)
                    else:
                        self._on_refused(conn, topic, answer)
            self._answered = asked
            self._told.set()
            self._told = asyncio.Event()
