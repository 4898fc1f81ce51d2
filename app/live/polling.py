"""What a replica does when the readiness reading (every second) shows that the NOTIFYs may not
reach it: from the primary in 'fanout' mode (Polling), or from a fan-out node that receives nothing
(NodeWatch).

A replica that listens on the primary while the primary sends no NOTIFYs (notify_mode 'fanout':
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

from app.data.nodes import NOT_SENDING

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


_LEAVE_AFTER = 5
"""Readings (seconds) a fan-out node may receive nothing, or be past the lag limit, before the
listener leaves it for the next URL."""
_RESTARTING_AFTER = 15
"""Readings (seconds) a node may have its subscription enabled and its apply worker not running,
when nothing else is wrong with it, before the listener leaves it: the worker is between two
attempts (after the primary restarted, or a blip of the network, it waits the node's
wal_retrieve_retry_interval, 5 s by default, then streams again from the same slot), and every
node of the primary is so at the same moment. A disabled subscription is left after _LEAVE_AFTER."""
_RETRY_NODES_AFTER = 10
"""Readings (seconds) between two attempts to get back to the fan-out nodes for a listener that
fell back to the primary (listed last in TRACKTALK_LISTEN_URL) while it sends no NOTIFYs."""


class NodeWatch:
    """Has the listener leave a fan-out node whose subscription receives nothing from the primary
    (disabled, failing: after a failover of the primary on PostgreSQL 15 or 16, its slot is gone),
    that follows another primary, whose trigger on the event log does not send, or that stays past
    the lag limit, for _LEAVE_AFTER readings in a row (_RESTARTING_AFTER for an enabled
    subscription whose worker is between two attempts), when TRACKTALK_LISTEN_URL lists another URL:
    the next node, or the primary itself if it is listed last. (A node that receives nothing is
    refused at connect too: app/data/nodes.py.) And has a listener that fell back to the primary
    while it sends no NOTIFYs ('fanout' mode: the replica polls the log and is not ready) try the
    nodes again every _RETRY_NODES_AFTER readings (the URLs are tried in turn from the next one,
    which wraps around to the first)."""

    def __init__(self, leave: Callable[[str], None], lag_limit: float) -> None:
        self._leave = leave
        self._lag_limit = lag_limit
        self._bad = 0
        self._unheard = 0

    def observe(
        self,
        running: bool | None,
        lag: float | None,
        unheard: bool = False,
        sending: bool = True,
        follows: bool = True,
        enabled: bool = True,
    ) -> None:
        """One reading of the node the listener is on: its subscription runs (None: not on a node,
        or it did not answer: the listener finds out by itself), and its lag in seconds;
        `unheard`: the listener is on the primary, which sends no NOTIFYs; `sending`: the node's
        trigger on the event log sends them; `follows`: its subscription follows the primary the
        replica writes to; `enabled`: its subscription is enabled (a worker not running then is
        given _RESTARTING_AFTER readings to come back)."""
        self._unheard = self._unheard + 1 if unheard else 0
        if self._unheard >= _RETRY_NODES_AFTER:
            self._unheard = 0
            self._leave(
                "it listens on the primary, which sends no NOTIFYs in 'fanout' mode: trying the nodes again"
            )
        if running is None:
            self._bad = 0
            return
        late = lag is not None and lag > self._lag_limit
        self._bad = self._bad + 1 if not running or not sending or not follows or late else 0
        restarting = not running and enabled and sending and follows and not late
        if self._bad >= (_RESTARTING_AFTER if restarting else _LEAVE_AFTER):
            self._bad = 0
            self._leave(
                "it follows another primary than DATABASE_URL's database"
                if not follows
                else "its subscription receives nothing from the primary"
                if not running
                else NOT_SENDING
                if not sending
                else f"it is {lag:.0f} s behind the primary (TRACKTALK_NODE_LAG_LIMIT {self._lag_limit:g})"
            )
