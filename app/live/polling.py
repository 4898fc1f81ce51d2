"""A replica that listens on the primary while the primary sends no NOTIFYs (notify_mode 'fanout':
the fan-out nodes send them) reads the log instead, every second, so that its sockets do not stall.

The readiness reading (app/ops/readiness.py, every second) says who sends the NOTIFYs and whether
the listener is on a fan-out node. Listening on the primary in 'fanout' mode, the replica checks
every watched topic against the log at each reading (one query for all of them; the topics that
moved catch up as after a reconnect), and every subscription's access every few readings (the
revocations, too, go to the nodes only); /readyz says it is not ready (app/handlers/health.py), so
that its sockets move to replicas on the nodes. Back in 'direct' mode (or on a node), a transaction
that read the mode before the switch may still commit without a NOTIFY: the replica goes on reading
the log until every transaction running at the first reading that showed the switch has ended
(the snapshot of that reading against the later ones), then once more. Nothing is lost: whatever
committed is in the log, and what is delivered twice is dropped by its seq.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

_RECHECK_EVERY = 5
"""Readings between two checks of every subscription's access while polling."""


def ended(before: str, now: str) -> bool:
    """Every transaction running at snapshot `before` (pg_current_snapshot()'s text, `xmin:xmax:xip,…`)
    has ended by snapshot `now`."""
    _, _, running = before.split(":")
    xmin, _, still = now.split(":")
    later = {int(x) for x in still.split(",") if x}
    return all(int(x) < int(xmin) or int(x) not in later for x in running.split(",") if x)


class Polling:
    """Reads the log for the topics of a replica whose listener hears nothing (see the module)."""

    def __init__(self, catch_up: Callable[[], None], recheck: Callable[[], None]) -> None:
        self._catch_up = catch_up
        self._recheck = recheck
        self.active = False
        """Reading the log at each reading."""
        self._draining: str | None = None
        """After the switch back: the snapshot of the transactions that may still commit unheard."""
        self._readings = 0

    def observe(self, on_primary: bool, mode: str | None, snapshot: str | None) -> None:
        """One readiness reading: whether the listener is connected to the primary (not to a
        fan-out node, and not away), the primary's notify_mode and its snapshot."""
        unheard = on_primary and mode == "fanout"
        if unheard:
            if not self.active:
                log.warning(
                    "notify_mode is 'fanout' and this replica listens on the primary, which sends no "
                    "NOTIFYs: reading the log every second (set TRACKTALK_LISTEN_URL to the fan-out nodes)"
                )
            self.active, self._draining = True, None
        elif self.active:
            if self._draining is None:
                self._draining = snapshot or ""
                log.info("NOTIFYs are heard again: reading the log until the transactions of the switch end")
            elif not self._draining or snapshot is None or ended(self._draining, snapshot):
                self.active, self._draining = False, None
                self._catch_up()
                return
        if not self.active:
            return
        self._readings += 1
        self._catch_up()
        if self._readings % _RECHECK_EVERY == 0:
            self._recheck()
