"""The journey deadline's decisions: how long a stage's oldest waiting event has waited, and when that is late."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from services.runtime.journey import Waiting, filters_of, oldest_waiting, overdue

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


async def test_a_consumer_of_many_symbols_is_asked_once_and_a_few_filters_one_by_one():
    class Stream:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def get_msg(self, stream, seq, subject, next):
            self.asked.append(subject)
            return SimpleNamespace(seq=seq + len(self.asked), subject="data_ready.X", time=NOW)

    def consumer(filters):
        return SimpleNamespace(num_pending=3, num_ack_pending=0, ack_floor=SimpleNamespace(stream_seq=10),
                               config=SimpleNamespace(filter_subject=None, filter_subjects=filters))

    few, many = Stream(), Stream()
    waiting = await oldest_waiting(few, "PIPELINE", consumer(["data_ready.A", "data_ready.B"]))
    assert few.asked == ["data_ready.A", "data_ready.B"] and waiting.seq == 12   # the first of them
    await oldest_waiting(many, "PIPELINE", consumer([f"data_ready.S{i}" for i in range(250)]))
    assert many.asked == [">"]
    idle = consumer(["data_ready.A"])
    idle.num_pending = 0
    assert await oldest_waiting(few, "PIPELINE", idle) is None
