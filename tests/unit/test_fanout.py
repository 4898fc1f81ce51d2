"""Fan-out nodes, in-process: TRACKTALK_LISTEN_URL as a list (a multi-host URL stays one), and what
a replica that listens on the primary does when the primary stops sending NOTIFYs (notify_mode
'fanout') and starts again (app/live/polling.py). The node's path through real servers:
tests/integration/test_fanout.py."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.data.nodes import NodeState, follows
from app.env import url_list
from app.live.polling import NodeWatch, Polling, ended


def test_listen_url_is_a_list_of_urls_and_a_multi_host_url_is_one_of_them() -> None:
    assert url_list("postgresql://app@db1,db2/tracktalk?target_session_attrs=read-write") == (
        "postgresql://app@db1,db2/tracktalk?target_session_attrs=read-write",
    )
    assert url_list(" postgresql://app@n1/t , postgres://app@n2:5433/t,postgresql://app@n3,n4/t ") == (
        "postgresql://app@n1/t",
        "postgres://app@n2:5433/t",
        "postgresql://app@n3,n4/t",
    )
    assert url_list("host=n1,n2 dbname=t") == ("host=n1,n2 dbname=t",)
    assert url_list("") == ()
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://app@primary/t",
            "TRACKTALK_SECRET": "s" * 32,
            "TRACKTALK_LISTEN_URL": "postgresql://app@n1/t,postgresql://app@n2/t",
        }
    )
    assert settings.listen_urls == ("postgresql://app@n1/t", "postgresql://app@n2/t")
    assert Settings(database_url="postgresql://app@primary/t", secret="s" * 32).listen_urls == (
        "postgresql://app@primary/t",
    )


@pytest.mark.parametrize(
    ("before", "now", "done"),
    [
        ("100:105:100,103", "101:110:103", False),  # 103 still runs
        ("100:105:100,103", "104:110:", True),  # both below the new xmin
        ("100:105:100,103", "100:110:100", False),  # 100 still runs
        ("100:105:100,103", "103:110:104", True),  # 100 below the new xmin, 103 runs no more
        ("100:100:", "100:120:101", True),  # nothing ran
    ],
)
def test_the_transactions_of_a_snapshot_have_ended_by_another(before: str, now: str, done: bool) -> None:
    assert ended(before, now) is done


class Calls:
    def __init__(self) -> None:
        self.catch_ups = 0
        self.rechecks = 0

    def catch_up(self) -> None:
        self.catch_ups += 1

    def recheck(self) -> None:
        self.rechecks += 1


def test_a_replica_on_the_primary_reads_the_log_while_the_primary_sends_nothing_and_after_until_the_switch_is_over() -> (
    None
):
    calls = Calls()
    polling = Polling(calls.catch_up, calls.recheck)
    polling.observe(True, "direct", "10:12:10")
    assert (polling.active, calls.catch_ups) == (False, 0)  # NOTIFYs come: nothing to read
    for _ in range(10):
        polling.observe(True, "fanout", "10:12:10")
    assert polling.active and calls.catch_ups == 10 and calls.rechecks == 2  # the log every reading
    # Back to 'direct': transaction 20 may have read 'fanout' and commits later, unheard.
    polling.observe(True, "direct", "20:25:20,22")
    polling.observe(True, "direct", "21:26:22,25")
    assert polling.active and calls.catch_ups == 12
    polling.observe(True, "direct", "23:26:25")  # 20 and 22 have ended: read once more, then stop
    assert not polling.active and calls.catch_ups == 13
    polling.observe(True, "direct", "30:30:")
    assert calls.catch_ups == 13


def test_a_replica_on_a_node_or_away_never_reads_the_log_for_the_mode() -> None:
    calls = Calls()
    polling = Polling(calls.catch_up, calls.recheck)
    for _ in range(3):
        polling.observe(False, "fanout", "10:12:10")
    assert (polling.active, calls.catch_ups) == (False, 0)


def test_the_listener_leaves_a_node_that_receives_nothing_or_stays_too_far_behind_after_five_readings() -> (
    None
):
    left: list[str] = []
    watch = NodeWatch(left.append, lag_limit=10)
    for _ in range(4):
        watch.observe(False, 0.0, enabled=False)
    watch.observe(True, 0.5)  # it came back: counting starts again
    for _ in range(4):
        watch.observe(False, None, enabled=False)
    assert left == []
    watch.observe(False, None, enabled=False)
    assert left == ["its subscription receives nothing from the primary"]
    # Enabled, its worker between two attempts (the primary restarted): 15 readings.
    for _ in range(14):
        watch.observe(False, 0.0)
    assert len(left) == 1
    watch.observe(True, 0.0)  # back, as after the primary's restart
    for _ in range(15):
        watch.observe(False, 0.0)
    assert left[-1] == "its subscription receives nothing from the primary" and len(left) == 2
    left.pop()
    for _ in range(5):
        watch.observe(True, 12.0)
    assert left[-1] == "it is 12 s behind the primary (TRACKTALK_NODE_LAG_LIMIT 10)"
    for _ in range(10):
        watch.observe(None, None)  # on the primary, or the node does not answer: the listener sees to it
        watch.observe(True, 9.0)
    assert len(left) == 2
    for _ in range(5):
        watch.observe(True, 0.0, sending=False)  # it receives, but its trigger on the log is off
    assert left[-1].startswith("its trigger on the event log is off") and len(left) == 3
    for _ in range(5):
        watch.observe(True, 0.0, follows=False)  # it runs, sends, is fresh: but not from this primary
    assert left[-1] == "it follows another primary than DATABASE_URL's database" and len(left) == 4


def _state(running: bool) -> NodeState:
    return NodeState("tracktalk_node_a", True, running, True, True, None, None)


def test_a_node_follows_the_primary_whose_database_has_its_slot_in_use_while_it_runs() -> None:
    assert follows({"tracktalk_node_a": True}, _state(running=True))
    assert not follows({"tracktalk_node_a": False}, _state(running=True))  # it streams from elsewhere
    assert follows({"tracktalk_node_a": False}, _state(running=False))  # idle because the node is down
    assert not follows({"tracktalk_node_b": True}, _state(running=True))
    assert not follows({}, _state(running=False))
    # A subscription made or altered WITH (slot_name = …): its slot is looked for by that name.
    renamed = _state(running=True)._replace(slot="by_hand")
    assert follows({"by_hand": True}, renamed)
    assert not follows({"tracktalk_node_a": True}, renamed)


def test_a_listener_fallen_back_to_a_primary_that_sends_nothing_tries_the_nodes_every_ten_readings() -> None:
    left: list[str] = []
    watch = NodeWatch(left.append, lag_limit=10)
    for _ in range(9):
        watch.observe(None, None, unheard=True)
    watch.observe(None, None)  # 'direct' again: counting starts over
    for _ in range(9):
        watch.observe(None, None, unheard=True)
    assert left == []
    watch.observe(None, None, unheard=True)
    assert left == [
        "it listens on the primary, which sends no NOTIFYs in 'fanout' mode: trying the nodes again"
    ]
    for _ in range(10):
        watch.observe(None, None, unheard=True)
    assert len(left) == 2
