"""The journey deadline's decisions: how long a stage's oldest waiting event has waited, and when that is late."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from services.runtime.journey import Waiting, filters_of, overdue

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def test_a_stage_is_overdue_only_past_the_deadline():
    waited = Waiting(seq=41, subject="data_ready.AAPL", since=NOW - timedelta(seconds=301))
    assert waited.age(NOW) == 301.0
    assert overdue(waited, 300, NOW) and not overdue(waited, 301, NOW) and not overdue(None, 0.001, NOW)
    assert Waiting(1, "x", NOW + timedelta(seconds=5)).age(NOW) == 0.0   # a clock ahead of ours waits no time


def test_the_subjects_a_consumer_takes_are_its_filter_its_filters_or_everything():
    def info(**config):
        return SimpleNamespace(config=SimpleNamespace(**{"filter_subject": None, "filter_subjects": None, **config}))

    assert filters_of(info(filter_subject="data_ready.>")) == ["data_ready.>"]
    assert filters_of(info(filter_subjects=["data_ready.AAPL", "data_ready.MSFT"])) == ["data_ready.AAPL",
                                                                                        "data_ready.MSFT"]
    assert filters_of(info()) == [">"]   # an agent that takes every bar reads the whole stream
