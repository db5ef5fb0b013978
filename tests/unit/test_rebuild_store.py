"""The rebuild's look at the event store (services/runtime/rebuild.py): how much of the history it needs from
the store, whether the store holds it, waiting for it to, and refusing a short history in one line."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import pytest

from contracts.codec import Incoming, decode, encode
from contracts.envelope import Envelope, headers_for, trace_id_for
from contracts.errors import ConfigError
from contracts.events import BarReceived
from contracts.subjects import subject_for
from replay.store import StoredEvent, open_store, parse_location
from services.data.sources import synthetic
from services.runtime.agent import Agent, Options
from services.runtime.rebuild import caught_up, fold_from_store, judge_store, needed_from_store
from tests.stores import KINDS, location_for

BARS = synthetic(["AAPL", "MSFT"], 15, seed=4)   # 30 bars, recorded as stream sequences 1..30


def recorded(seqs: range) -> list[StoredEvent]:
    rows = []
    for seq in seqs:
        bar = BARS[seq - 1]
        env = Envelope(id=f"bar-{seq}", type="tradeflow.market_bar.v1", source="data", time=bar.ts,
                       subject=subject_for(bar), trace_id=trace_id_for(f"bar-{seq}"), sequence=seq)
        incoming = decode(env.subject, encode(bar), headers_for(env), sequence=seq)
        rows.append(StoredEvent.of(incoming, recorded_at=datetime.now(timezone.utc)))
    return rows


class Bars(Agent):
    """Remembers the stream sequence of every bar folded into it."""

    name = "bars"
    consumes = ("data_ready.>",)
    options = Options(stateful=True)

    def __init__(self) -> None:
        self.seen: list[int] = []

    def handle(self, incoming: Incoming, now: datetime) -> list:
        assert isinstance(incoming.event, BarReceived)
        self.seen.append(incoming.envelope.sequence)
        return []

    def snapshot(self) -> list[int]:
        return list(self.seen)

    def restore(self, snapshot: list[int]) -> None:
        self.seen = list(snapshot)


@pytest.fixture(params=KINDS)
async def store_at(request, tmp_path):
    """A store's location, holding the bars of sequences 1..10."""
    location = parse_location(location_for(request.param, request, tmp_path), "TRADEFLOW_STORE")
    async with open_store(location) as store:
        await store.append(recorded(range(1, 11)))
    return location


@pytest.mark.parametrize("first, floor, needed", [
    pytest.param(1, 500, 0, id="the-stream-holds-everything"),
    pytest.param(200, 0, 0, id="nothing-processed-yet"),
    pytest.param(200, 500, 199, id="processed-history-aged-out"),
    pytest.param(200, 150, 150, id="aged-out-beyond-the-ack-floor"),
    pytest.param(201, 200, 200, id="everything-processed-aged-out"),
])
def test_what_the_rebuild_needs_from_the_store(first, floor, needed):
    assert needed_from_store(first, floor) == needed


@pytest.mark.parametrize("needed, recorded, waited, wait, verdict", [
    pytest.param(199, 199, 0.0, 60.0, "fold", id="caught-up"),
    pytest.param(199, 5000, 0.0, 60.0, "fold", id="ahead"),
    pytest.param(0, 0, 0.0, 0.0, "fold", id="nothing-needed-empty-store"),
    pytest.param(199, 198, 0.0, 60.0, "wait", id="one-behind"),
    pytest.param(199, 0, 59.9, 60.0, "wait", id="empty-within-the-wait"),
    pytest.param(199, 198, 60.0, 60.0, "refuse", id="behind-after-the-wait"),
    pytest.param(199, 0, 0.0, 0.0, "refuse", id="no-wait-allowed"),
])
def test_the_store_is_judged_on_its_highest_sequence(needed, recorded, waited, wait, verdict):
    assert judge_store(needed, recorded, waited, wait) == verdict


async def test_a_store_behind_is_waited_for_until_the_recorder_catches_up(store_at, caplog):
    async def recorder() -> None:
        async with open_store(store_at) as store:
            for seq in range(11, 21):
                await asyncio.sleep(0.05)
                await store.append(recorded(range(seq, seq + 1)))

    writing = asyncio.create_task(recorder())
    with caplog.at_level(logging.WARNING, logger="services.runtime.rebuild"):
        store = await caught_up(store_at, 20, first=21, wait=30)
    try:
        assert await store.last_seq() >= 20
    finally:
        await store.close()
        await writing
    waits = [r for r in caplog.records if "waits for the event store" in r.getMessage()]
    assert len(waits) == 1 and waits[0].needs_up_to_seq == 20 and waits[0].store_holds_up_to_seq == 10


async def test_a_store_that_stays_behind_is_refused_in_one_line(store_at):
    with pytest.raises(ConfigError) as refused:
        await caught_up(store_at, 20, first=21, wait=0.6)
    message = str(refused.value)
    assert message.startswith("TRADEFLOW_STORE: the event store ") and "\n" not in message
    assert "holds events up to seq 10, the stream starts at seq 21: seqs 11..20 are in neither" in message
    assert "TRADEFLOW_REBUILD_WAIT" in message


async def test_no_store_at_all_is_a_store_behind(tmp_path):
    missing = parse_location(str(tmp_path / "none.sqlite"), "TRADEFLOW_STORE")
    with pytest.raises(ConfigError, match="holds events up to seq 0, the stream starts at seq 6"):
        await caught_up(missing, 5, first=6, wait=0.3)
    assert list(tmp_path.iterdir()) == [], "looking for the store made nothing"


async def test_the_fold_takes_what_is_needed_and_leaves_out_what_was_given_up_on(store_at):
    agent = Bars()
    folded = await fold_from_store(agent, store_at, 8, first=9, dead={3})
    assert agent.seen == [1, 2, 4, 5, 6, 7, 8] and folded == 7
