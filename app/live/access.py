"""The access guard: sockets whose user may no longer see their track are closed.

A revocation (a track made private, moved or deleted; a user off the team or deleted) names the
track's or the user's sockets; each (user, track) pair is asked of the database again
(tracktalk.can_see), and the sockets refused are closed with 1008. A revocation may also pass
unheard (before a channel was listened on, while the listener was away): `epoch` moves then, and
the socket handler asks again for a socket admitted meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Protocol

from app.backoff import Backoff
from app.live import close_codes
from app.live.hub import Hub

log = logging.getLogger(__name__)

_RECHECK_RETRY = 1.0
"""Seconds before a failed access recheck is tried again, every time (steady, not growing: a socket
that lost access is closed within 5 s of the database's answer)."""


class AccessReader(Protocol):
    """What the guard asks (app/data/events.py's EventLog; an in-memory one in the unit tests)."""

    async def visible(self, pairs: list[tuple[int, str]]) -> set[tuple[int, str]]:
        """Which (user, track) pairs may still watch."""


class AccessGuard:
    """Checks again who may watch, as revocations come in."""

    def __init__(self, hub: Hub, log: AccessReader) -> None:
        self._hub = hub
        self._log = log
        self.epoch = 0
        """Goes up whenever a revocation may have passed a socket being admitted: a revocation
        heard, a reconnect, a channel newly listened on. The socket handler checks access again
        when it moved during the admission."""
        self._recheck: set[tuple[int, str]] = set()
        self._wake = asyncio.Event()

    def moved(self) -> None:
        """A revocation may have passed unheard, or was heard: move the epoch."""
        self.epoch += 1

    def recheck(self, pairs: Iterable[tuple[int, str]]) -> None:
        """Ask again whether each (user, track) may watch (soon, in one query)."""
        self._recheck.update(pairs)
        if self._recheck:
            self._wake.set()

    def recheck_track(self, track_id: str) -> None:
        """Ask again for every socket of the track."""
        self.recheck((sub.user_id, track_id) for sub in self._hub.track_sockets(track_id))

    def recheck_user(self, user_id: int) -> None:
        """Ask again for every socket of the user."""
        self.recheck((user_id, sub.track_id) for sub in self._hub.user_sockets(user_id))

    def recheck_all(self) -> None:
        """Ask again for every socket here."""
        self.recheck((sub.user_id, sub.track_id) for sub in self._hub.all_sockets())

    async def enforce(self) -> None:
        """Close the sockets whose user may no longer see their track, as revocations come in."""
        recheck_backoff = Backoff(_RECHECK_RETRY, _RECHECK_RETRY)
        while True:
            await self._wake.wait()
            self._wake.clear()
            pairs, self._recheck = list(self._recheck), set()
            try:
                allowed = await self._log.visible(pairs)
            except Exception as exc:
                log.warning("access not checked again (will retry): %s", type(exc).__name__)
                self.recheck(pairs)
                await recheck_backoff.wait()
                continue
            recheck_backoff.reset()
            refused: dict[str, set[int]] = {}
            for user_id, track_id in set(pairs) - allowed:
                refused.setdefault(track_id, set()).add(user_id)
            for track_id, users in refused.items():
                for sub in self._hub.track_sockets(track_id):
                    if sub.user_id in users:
                        sub.close(close_codes.POLICY, close_codes.ACCESS_REVOKED)
