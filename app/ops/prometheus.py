"""Prometheus metrics of a replica, read from its parts when scraped (GET /metrics)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import GC_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from app import garbage
from app.listener import Listener
from app.live.hub import Hub
from app.live.notices import Codec
from app.presence.tracker import Presence
from app.wire import NotifyQueue

log = logging.getLogger(__name__)

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The replica's registry: live counters from the hub and listener, and the lag histogram."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self.registry = CollectorRegistry(auto_describe=True)
        # The process's memory and CPU, and the garbage collector's passes by generation
        # (app/server.py tunes it: a rising generation="2" count is worth a look).
        self.registry.register(PROCESS_COLLECTOR)
        self.registry.register(GC_COLLECTOR)
        self.lag = Histogram(
            "tracktalk_delivery_lag_seconds",
            "From the trigger that made an event to its hand-over to this replica's sockets.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.notify_queue = NotifyQueue(0.0, 1.0)
        """The fullest of the NOTIFY queues /readyz watches, as last read (every second: the server
        the listener is on, and the primary's while its writers send NOTIFYs;
        app/ops/readiness.py's watched_queues())."""

    def read_queue_usage(self, queue: NotifyQueue) -> None:
        """Keep a new reading of the fullest NOTIFY queue."""
        self.notify_queue = queue

    def watch(self, listener: Listener, codec: Codec) -> None:
        """Report the hub's, the listener's and the codec's live counters."""
        self.registry.register(_Live(self._hub, listener, codec, self))

    def count_presence(self, presence: Presence) -> None:
        """Report presence's replicas and statements."""
        self.registry.register(_Presence(presence))


class _Live(Collector):
    def __init__(self, hub: Hub, listener: Listener, codec: Codec, metrics: Metrics) -> None:
        self._hub = hub
        self._listener = listener
        self._codec = codec
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tracktalk_open_sockets", "WebSockets open on this replica.", value=self._hub.sockets
        )
        yield GaugeMetricFamily(
            "tracktalk_watched_tracks", "Tracks with sockets on this replica.", value=self._hub.watched_tracks
        )
        yield GaugeMetricFamily(
            "tracktalk_watched_topics",
            "Topics (tracks among them) with sockets on this replica.",
            value=len(self._hub.topics),
        )
        yield CounterMetricFamily(
            "tracktalk_events_delivered", "Frames handed to sockets.", value=self._hub.delivered
        )
        yield CounterMetricFamily(
            "tracktalk_sockets_opened",
            "Sockets admitted on this replica since it started.",
            value=self._hub.opened,
        )
        freezer = garbage.running  # counted, not read from gc: gc.get_freeze_count() walks every object
        yield CounterMetricFamily(
            "tracktalk_gc_freezes",
            "Bursts of new sockets frozen out of the garbage collector (app/garbage.py).",
            value=freezer.freezes if freezer is not None else 0,
        )
        yield CounterMetricFamily(
            "tracktalk_gc_thaws",
            "Collections of what was frozen (everything let back, collected once, frozen again).",
            value=freezer.collections if freezer is not None else 0,
        )
        yield CounterMetricFamily(
            "tracktalk_sockets_dropped_slow",
            "Sockets closed with 1013 for not keeping up.",
            value=self._hub.dropped_slow,
        )
        yield CounterMetricFamily(
            "tracktalk_listener_reconnects",
            "Times the LISTEN connection was lost and made again.",
            value=self._listener.reconnects,
        )
        yield CounterMetricFamily(
            "tracktalk_channel_key_changes",
            "Times the listener took a new channel key (SELECT tracktalk.rotate_channel_key()) and renamed its channels.",
            value=self._listener.rekeys,
        )
        yield GaugeMetricFamily(
            "tracktalk_listened_channels",
            "NOTIFY channels (topics and users with sockets here) the listener listens on.",
            value=self._listener.channels,
        )
        yield CounterMetricFamily(
            "tracktalk_notify_rejected",
            "NOTIFY payloads ignored: not signed or sealed with tracktalk's key, replayed, or malformed.",
            value=self._codec.rejected,
        )
        yield GaugeMetricFamily(
            "tracktalk_listener_ready",
            "1 when the listener is connected and caught up.",
            value=float(self._listener.ready),
        )
        queue = self._metrics.notify_queue
        # The help stays the same whoever's queue it is (a Prometheus client keeps one per metric,
        # and some refuse a family whose help changes): whose it is goes in a label of its own.
        yield GaugeMetricFamily(
            "tracktalk_notify_queue_usage",
            "pg_notification_queue_usage(): the fraction of PostgreSQL's NOTIFY queue in use.",
            value=queue.usage,
        )
        server = GaugeMetricFamily(
            "tracktalk_notify_queue_server_info",
            "Whose NOTIFY queue tracktalk_notify_queue_usage reports (the fullest of those /readyz "
            "watches): server is 'primary', or the fan-out node's host:port/dbname.",
            labels=["server"],
        )
        server.add_metric(["primary" if queue.server is None else queue.server], 1.0)
        yield server


class _Presence(Collector):
    def __init__(self, presence: Presence) -> None:
        self._presence = presence

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tracktalk_presence_replicas",
            "Replicas whose listeners are counted now (heartbeat within 12 s), this one included.",
            value=self._presence.live_replicas,
        )
        yield CounterMetricFamily(
            "tracktalk_presence_writes",
            "Presence statements that write: rows of changed tracks, heartbeats.",
            value=self._presence.writes,
        )
        yield CounterMetricFamily(
            "tracktalk_presence_reads",
            "Presence reads of the other replicas' rows.",
            value=self._presence.reads,
        )
