"""A stateful agent's tracking record: which stream positions its state holds."""

from __future__ import annotations

import pytest

from services.runtime.tracking import Tracking


def test_everything_at_or_below_the_floor_and_what_was_added_above_it_is_held():
    tracking = Tracking(floor=10, above=[12, 15, 9])
    assert [seq for seq in range(1, 18) if tracking.holds(seq)] == [*range(1, 11), 12, 15]
    assert len(tracking) == 2   # 9 is under the floor already


def test_an_input_waiting_for_a_retry_under_newer_ones_is_not_held():
    tracking = Tracking(floor=100)
    tracking.add([101, 103, 104])          # 102 failed and was nak'd: it comes back later
    assert not tracking.holds(102)
    tracking.add([102])
    assert tracking.holds(102)


@pytest.mark.parametrize("reported", [50, 100], ids=["older after a kill -9 of nats-server", "the same"])
def test_the_floor_never_goes_down(reported):
    tracking = Tracking(floor=100, above=[105])
    tracking.advance(reported)
    assert tracking.floor == 100 and tracking.holds(105) and tracking.holds(100)


def test_moving_the_floor_up_forgets_what_it_covers():
    tracking = Tracking(floor=0, above=range(1, 1001))
    tracking.advance(990)
    assert tracking.floor == 990 and len(tracking) == 10
    assert all(tracking.holds(seq) for seq in range(1, 1001)) and not tracking.holds(1001)


def test_adding_below_the_floor_keeps_nothing():
    tracking = Tracking(floor=500)
    tracking.add(range(400, 501))
    assert len(tracking) == 0 and tracking.holds(450)
