"""app/backoff.py: the waits of every retry loop (the listener's reconnect, a catch-up, the check
after a reconnect, the access recheck)."""

from __future__ import annotations

import pytest

from app.backoff import Backoff


def test_the_wait_doubles_from_first_up_to_most_and_a_success_starts_it_afresh() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next_delay() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.failures == 6
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == pytest.approx(0.1)


def test_jitter_draws_each_wait_from_the_upper_part_of_its_range() -> None:
    draws = iter([0.0, 1.0, 0.5])
    backoff = Backoff(0.1, 5.0, jitter=0.5, rand=lambda: next(draws))
    assert backoff.next_delay() == pytest.approx(0.1)  # drawn 0: the whole wait
    assert backoff.next_delay() == pytest.approx(0.1)  # 0.2, drawn 1: its half
    assert backoff.next_delay() == pytest.approx(0.3)  # 0.4, drawn 0.5: three quarters


def test_a_steady_backoff_waits_the_same_every_time_and_a_long_outage_never_overflows() -> None:
    steady = Backoff(1.0, 1.0)
    assert {steady.next_delay() for _ in range(100)} == {1.0}
    growing = Backoff(0.05, 5.0)
    assert [growing.next_delay() for _ in range(10_000)][-1] == 5.0


@pytest.mark.parametrize(
    "first, most, factor, jitter", [(0, 1, 2, 0), (2, 1, 2, 0), (1, 2, 0.5, 0), (1, 2, 2, 1.5)]
)
def test_a_backoff_that_could_not_wait_is_refused(
    first: float, most: float, factor: float, jitter: float
) -> None:
    with pytest.raises(ValueError, match="0 < first <= most"):
        Backoff(first, most, factor=factor, jitter=jitter)


async def test_wait_sleeps_the_next_delay() -> None:
    backoff = Backoff(0.01, 0.01)
    await backoff.wait()
    assert backoff.failures == 1
