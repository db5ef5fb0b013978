"""The fill ledger port, one behaviour suite run against both adapters (a real SQLite file, a real
PostgreSQL database): one fill per order id, the first recorded standing for good, also when two
processes record the same orders at once; and execution publishing the fill that stands."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import psycopg
import pytest

from contracts.codec import Incoming
from contracts.envelope import Envelope
from contracts.errors import ConfigError, Transient
from contracts.events import BarReceived, Event, OrderApproved, OrderFilled
from contracts.subjects import STAGES, stage_of, subject_for
from services import registry
from services.execution.ledger import open_ledger
from services.execution.logic import BrokerParams
from services.execution.service import ExecutionAgent
from services.ops.supervisor import free_port
from services.runtime.agent import AgentContext, Output, output_id
from services.runtime.config import RuntimeSettings
from services.runtime.metrics import Metrics
from services.runtime.worker import Worker
from tests.unit.test_worker import Dedup, Published, Wire, message

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
SETTING = "TRADEFLOW_EXECUTION_LEDGER"


@dataclass
class Backend:
    """One adapter's ledger for a test: where it is (as TRADEFLOW_EXECUTION_LEDGER would say), one it cannot
    open, and a way to look at it from outside."""

    kind: str
    location: str
    unusable: list[str]   # locations open_ledger must refuse with a one-line error

    def run(self, sql: str) -> list[tuple]:
        """Run one statement on the ledger's database directly (as an older or newer tradeflow would)."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.location) as db:
                return db.execute(sql).fetchall()
        with psycopg.connect(self.location, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def has_fills_table(self) -> bool:
        if self.kind == "sqlite":
            return bool(Path(self.location).exists() and self.run("SELECT name FROM sqlite_master WHERE name='fills'"))
        return self.run("SELECT to_regclass('fills') IS NOT NULL")[0][0]

    def make_newer(self) -> None:
        """Leave the database as a newer tradeflow would: its ledger schema at version 2."""
        if self.kind == "sqlite":
            self.run("PRAGMA user_version = 2")
        else:
            self.run("CREATE TABLE tradeflow_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            self.run("INSERT INTO tradeflow_schema VALUES ('fills', 2)")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> Backend:
    if request.param == "sqlite":
        junk = tmp_path / "junk.sqlite"
        junk.write_bytes(b"this is not sqlite" * 100)
        return Backend("sqlite", str(tmp_path / "fills.sqlite"),
                       [str(tmp_path / "nope" / "fills.sqlite"), f"sqlite:///{junk}"])
    url = request.getfixturevalue("pg_url")
    return Backend("postgresql", url, [f"postgresql://tradeflow:s3cret@127.0.0.1:{free_port()}/ledger"])


@pytest.fixture
async def ledger(backend):
    async with open_ledger(backend.location) as opened:
        yield opened


def filled(order_id: str, price: float = 100.0, symbol: str = "GOOG", minutes: int = 0) -> OrderFilled:
    return OrderFilled(symbol=symbol, ts=TS + timedelta(minutes=minutes), order_id=order_id, side="buy",
                       quantity=10.0, price=price, commission=1.0)


# -- the port ------------------------------------------------------------------------------------------

async def test_an_order_is_recorded_once_and_its_first_fill_stands(ledger):
    assert await ledger.record([filled("a"), filled("b")]) == ({"a": filled("a"), "b": filled("b")}, {"a", "b"})
    again = await ledger.record([filled("a", price=999.0), filled("c")])
    assert again == ({"a": filled("a"), "c": filled("c")}, {"c"})   # "a" keeps its first fill, and the caller is told
    assert await ledger.count() == 3
    assert await ledger.lookup(["a", "c", "missing", "a"]) == {"a": filled("a"), "c": filled("c")}
    assert await ledger.record([]) == ({}, set()) and await ledger.lookup([]) == {}


async def test_one_record_of_one_order_twice_keeps_the_first(ledger):
    assert await ledger.record([filled("a", price=1.0), filled("a", price=2.0)]) == ({"a": filled("a", price=1.0)},
                                                                                      {"a"})
    assert await ledger.count() == 1


async def test_more_orders_than_one_statement_binds(ledger):
    await ledger.record([filled(f"id-{i}") for i in range(0, 2000, 2)])
    found = await ledger.lookup([f"id-{i}" for i in range(2000)])
    assert sorted(found) == sorted(f"id-{i}" for i in range(0, 2000, 2))
    assert await ledger.count() == 1000


async def test_recent_is_newest_first_by_fill_time_then_by_recording(ledger):
    await ledger.record([filled("a", minutes=1), filled("b", symbol="MSFT", minutes=2)])
    await ledger.record([filled("c", minutes=3), filled("d", minutes=3)])   # one time: recorded order decides
    await ledger.record([filled("e", minutes=3)])
    assert [f.order_id for f in await ledger.recent()] == ["e", "d", "c", "b", "a"]
    assert [f.order_id for f in await ledger.recent(2)] == ["e", "d"]
    assert await ledger.recent(symbol="MSFT") == [filled("b", symbol="MSFT", minutes=2)]
    assert await ledger.recent(symbol="NONE") == []


async def test_a_fill_comes_back_exactly(backend, ledger):
    odd = OrderFilled(symbol="BRK.B", ts=datetime(2024, 3, 1, 9, 30, 0, 123456, tzinfo=timezone.utc),
                      order_id="o/1 ü'", side="sell", quantity=0.1 + 0.2, price=1e-7, commission=12345.678901234)
    await ledger.record([odd])
    async with open_ledger(backend.location) as other:   # read back by another process
        assert await other.lookup([odd.order_id]) == {odd.order_id: odd}
        assert msgspec.json.encode((await other.recent(1))[0]) == msgspec.json.encode(odd)


async def test_a_ledger_knows_what_was_there_when_it_opened_and_record_tells_it_the_rest(backend):
    """lookup is a positive cache: what another process recorded after this one opened is not in it; record's
    answer is (and from then on lookup knows it)."""
    async with open_ledger(backend.location) as first, open_ledger(backend.location) as second:
        await first.record([filled("a", price=1.0)])
        assert await second.lookup(["a"]) == {}                                   # not known here yet
        assert await second.record([filled("a", price=2.0)]) == ({"a": filled("a", price=1.0)}, set())   # the truth
        assert await second.lookup(["a"]) == {"a": filled("a", price=1.0)}
    async with open_ledger(backend.location) as third:
        assert await third.lookup(["a"]) == {"a": filled("a", price=1.0)}       # held when it opened


async def test_two_processes_recording_the_same_orders_at_once_fill_each_once(backend):
    """Two ledgers on one database (two execution processes' views) record the same orders with different
    fills, in overlapping batches in different orders, concurrently (five rounds of 300 orders: writers that
    took their row locks in different orders would deadlock now and then): each order has one row, and both
    are told the same fill stands, the one the ledger holds."""
    answers: list[dict[str, OrderFilled]] = [{}, {}]
    inserted: list[set[str]] = [set(), set()]

    async def process(ledger, orders: list[str], number: int, price: float) -> None:
        mine = orders[:]
        random.Random(f"{orders[0]}/{number}").shuffle(mine)
        for start in range(0, len(mine), 40):
            standing, new = await ledger.record([filled(o, price=price) for o in mine[start:start + 60]])
            answers[number] |= standing
            inserted[number] |= new

    async with open_ledger(backend.location) as one, open_ledger(backend.location) as two:
        for round_ in range(5):
            orders = [f"o-{round_}-{i:03}" for i in range(300)]
            await asyncio.gather(process(one, orders, 0, 100.0), process(two, orders, 1, 200.0))
        everything = [f"o-{round_}-{i:03}" for round_ in range(5) for i in range(300)]
        assert await one.count() == await two.count() == 1500
        stored = await one.lookup(everything)
    assert answers[0] == answers[1] == stored
    assert set(stored) == set(everything) and {f.price for f in stored.values()} <= {100.0, 200.0}
    assert not inserted[0] & inserted[1] and inserted[0] | inserted[1] == set(everything)   # each insert told once
    assert {o for o, f in stored.items() if f.price == 100.0} == inserted[0]
    assert backend.run("SELECT count(DISTINCT order_id), count(*) FROM fills") == [(1500, 1500)]


# -- bad input: one line naming the setting, nothing written -------------------------------------------

async def test_a_ledger_that_cannot_be_opened_is_a_one_line_error(backend):
    for location in backend.unusable:
        with pytest.raises(ConfigError, match=SETTING) as caught:
            await open_ledger(location, timeout=1)
        message = str(caught.value)
        assert "\n" not in message and "s3cret" not in message, message
        if backend.kind == "postgresql":
            assert "tradeflow:***@127.0.0.1" in message


async def test_a_newer_schema_is_refused_and_nothing_is_written(backend):
    backend.make_newer()
    with pytest.raises(ConfigError, match=f"{SETTING}: .*schema .*version 2, newer than this code's 1") as caught:
        await open_ledger(backend.location)
    assert "\n" not in str(caught.value)
    assert not backend.has_fills_table()


@pytest.mark.parametrize("value", [
    pytest.param("postgresql://tradeflow:s3cret@db.example/ledger?nonsense=1", id="unknown-parameter"),
    pytest.param("postgresql://tradeflow:s3cret@db.example", id="no-database"),
    pytest.param("sqlite://fills.sqlite", id="sqlite-two-slashes"),
    pytest.param("mysql://tradeflow:s3cret@db.example/ledger", id="unknown-scheme"),
])
def test_a_malformed_ledger_setting_stops_execution_before_it_starts(value):
    with pytest.raises(ConfigError, match=SETTING) as caught:
        registry.build("execution", {SETTING: value})
    assert "\n" not in str(caught.value) and "s3cret" not in str(caught.value)


def test_a_process_that_failed_to_open_its_ledger_still_exits(backend):
    import subprocess
    import sys

    script = ("import asyncio\nfrom contracts.errors import ConfigError\n"
              "from services.execution.ledger import open_ledger\n"
              f"async def main():\n    await open_ledger({backend.unusable[-1]!r}, timeout=1)\n"
              "try:\n    asyncio.run(main())\n"
              "except ConfigError:\n    print('refused')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "refused", done.stderr


# -- execution on the ledger ---------------------------------------------------------------------------

def order(order_id: str = "o-1", side: str = "buy", quantity: float = 10.0) -> OrderApproved:
    return OrderApproved(symbol="GOOG", ts=TS, order_id=order_id, side=side, quantity=quantity, price=100.0)


def bar(day: int, open_: float) -> BarReceived:
    return BarReceived(symbol="GOOG", ts=TS + timedelta(days=day), open=open_, high=open_ + 1, low=open_ - 1,
                       close=open_)


def incoming(event: Event, event_id: str) -> Incoming:
    subject = subject_for(event)
    env = Envelope(id=event_id, type=STAGES[stage_of(subject)][1], source="t", time=TS, subject=subject,
                   trace_id="1" * 32)
    return Incoming(env, event)


async def open_agent(backend: Backend, metrics: Metrics | None = None, **params) -> ExecutionAgent:
    agent = ExecutionAgent(BrokerParams(**params), backend.location)
    await agent.open(AgentContext(cache=None, data_dir=Path("/nonexistent"), metrics=metrics))  # type: ignore[arg-type]
    return agent


async def handled(agent: ExecutionAgent, *inputs: Incoming) -> tuple[list[Output], int]:
    """What the runtime does with one batch, up to publishing: snapshot, prepare, handle each, record; a
    Transient from record rolls the state back and does it all again. The outputs (the fills, each with its
    id key and cause), and how many times the batch was rolled back."""
    snapshot, again = agent.snapshot(), 0
    while True:
        await agent.prepare(list(inputs))
        out = [f for inc in inputs for f in agent.handle(inc, TS)]
        try:
            await agent.record()
            return out, again
        except Transient:
            agent.restore(snapshot)
            again += 1


async def batch(agent: ExecutionAgent, *inputs: Incoming) -> list[Output]:
    return (await handled(agent, *inputs))[0]


async def test_a_fill_recorded_but_never_published_is_replayed_not_refilled(backend):
    first = await open_agent(backend, fill_price="close", slippage_bps=0)
    [original] = await batch(first, incoming(order(), "e-1"))
    await first.close()   # the process dies here: the fill is in the ledger, the publish never happened
    # restarted with other settings: the redelivered order gets the recorded fill, not a new one
    metrics = Metrics("execution")
    second = await open_agent(backend, metrics, fill_price="close", slippage_bps=50, commission_rate=0.01)
    try:
        assert await handled(second, incoming(order(), "e-1")) == ([original], 0)
        # its own earlier run's fill, held when it opened: not taken for another process's
        assert metrics.registry.get_sample_value("tradeflow_fills_recorded_elsewhere_total",
                                                 {"service": "execution"}) == 0
        assert second.broker.holdings["GOOG"].quantity == 10.0
        assert second.broker.cash == pytest.approx(100_000 - original.event.commission)
        assert await batch(second, incoming(order(), "e-1-again")) == []   # the same order id: nothing
        assert await second.ledger.count() == 1
    finally:
        await second.close()


async def test_an_order_waiting_for_its_bar_takes_the_recorded_fill_of_that_bar(backend):
    first = await open_agent(backend)
    assert await batch(first, incoming(order(), "e-1")) == []           # waits for the next bar's open
    [original] = await batch(first, incoming(bar(1, 101.0), "b-1"))
    assert (original.event.price, original.event.ts) == (101.0, TS + timedelta(days=1))
    await first.close()
    # rebuilt with the order (acknowledged) but not the bar (its batch died after the ledger write)
    second = await open_agent(backend, slippage_bps=100)
    try:
        second.handle(incoming(order(), "e-1"), TS)
        assert await batch(second, incoming(bar(1, 101.0), "b-1")) == [original]
    finally:
        await second.close()


async def test_a_recorded_fill_published_again_from_another_input_keeps_its_event_id(backend):
    """A state that lost the bar an order was filled on (its mark gone with Redis) fills the order again on
    a later bar: the ledger gives the recorded fill, and its event id is the order's fill's, whichever input
    it comes from, so the stream's duplicate window drops it (an id from the bar made it a second fill)."""
    first = await open_agent(backend)
    await batch(first, incoming(order(), "e-1"))
    [original] = await batch(first, incoming(bar(1, 101.0), "b-1"))
    await first.close()
    second = await open_agent(backend)
    try:
        second.handle(incoming(order(), "e-1"), TS)   # folded in; the bar it was filled on was not
        [again] = await batch(second, incoming(bar(2, 105.0), "b-2"))
        assert again == original
        ids = {output_id(first.name, "b-1", 0, original), output_id(second.name, "b-2", 0, again),
               output_id(second.name, "e-1", 0, again)}
        assert len(ids) == 1, ids
    finally:
        await second.close()


async def test_two_processes_alive_at_once_publish_the_fill_that_stands(backend, tmp_path, monkeypatch):
    """Two execution processes on one ledger, both alive, both handed the same orders (a message redelivered
    to the second while the first still had it), each through the runtime's worker: the second, which did
    not know, makes fills of its own (other settings: another slippage); the ledger says the first's stand,
    the batch is rolled back and handled again, and what it publishes is those, with their event ids and
    bodies, and its account holds them too."""
    pauses: list[float] = []

    async def pause(seconds, stopping) -> None:
        pauses.append(seconds)

    monkeypatch.setattr("services.runtime.worker.pause", pause)
    metrics = Metrics("execution")
    first = await open_agent(backend, fill_price="close")
    second = await open_agent(backend, metrics, fill_price="close", slippage_bps=80)   # opened before the first fills
    try:
        orders = [order(f"o-{i}", quantity=i + 1) for i in range(5)]
        wire, ones, twos = Wire(), Published(), Published()

        def deliveries(upto: int) -> list:   # each process its own deliveries of the same stream messages
            return [message(wire, seq, o) for seq, o in enumerate(orders[:upto], 1)]

        await run_worker(first, ones, tmp_path / "one").process(deliveries(3))
        await run_worker(second, twos, tmp_path / "two").process(deliveries(5))
        assert len(pauses) == 1   # one roll-back: the ledger's answer, then the batch again with the fills that stand
        assert metrics.registry.get_sample_value("tradeflow_fills_recorded_elsewhere_total",
                                                 {"service": "execution"}) == 3
        assert [(o.headers["ce-id"], o.body) for o in twos.out[:3]] == [(o.headers["ce-id"], o.body) for o in ones.out]
        fills = [msgspec.json.decode(o.body, type=OrderFilled) for o in twos.out]
        assert [f.price for f in fills[3:]] == [pytest.approx(100.8)] * 2   # its own, where it was first
        assert second.broker.holdings["GOOG"].quantity == sum(f.quantity for f in fills) == 15
        assert second.broker.cash == pytest.approx(100_000 - sum(f.commission for f in fills))
        assert await second.ledger.lookup([o.order_id for o in orders]) == {f.order_id: f for f in fills}
        assert all(answers[-1] == "+ACK" for answers in wire.answers().values())
    finally:
        await first.close()
        await second.close()


def run_worker(agent: ExecutionAgent, published: Published, data_dir: Path) -> Worker:
    """The runtime's worker around `agent`, publishing into `published`, with a dedup registry that answers."""
    settings = RuntimeSettings(data_dir=str(data_dir), backoff=[0.5])
    return Worker(agent, object(), publisher=published, dedup=Dedup(), metrics=Metrics(agent.name),  # type: ignore[arg-type]
                  settings=settings)


async def test_the_ledger_stays_empty_when_nothing_fills(backend):
    agent = await open_agent(backend, fill_price="close")
    try:
        await batch(agent, incoming(bar(1, 100.0), "b-1"))
        assert await agent.ledger.count() == 0
    finally:
        await agent.close()


async def test_the_default_ledger_is_a_file_in_the_data_directory(tmp_path):
    agent = ExecutionAgent(BrokerParams(fill_price="close"))
    await agent.open(AgentContext(cache=None, data_dir=tmp_path, metrics=None))
    try:
        await batch(agent, incoming(order(), "e-1"))
    finally:
        await agent.close()
    with sqlite3.connect(tmp_path / "fills.sqlite") as db:
        assert db.execute("SELECT order_id FROM fills").fetchall() == [("o-1",)]


@pytest.mark.parametrize(("query", "status", "expected"), [
    pytest.param("", 200, ["c", "b", "a"], id="default"),
    pytest.param("?limit=2", 200, ["c", "b"], id="limit"),
    pytest.param("?symbol=MSFT", 200, ["b"], id="symbol"),
    pytest.param("?limit=0", 400, "limit", id="limit-zero"),
    pytest.param("?limit=10001", 400, "limit", id="limit-too-big"),
    pytest.param("?limit=ten", 400, "limit", id="limit-not-a-number"),
    pytest.param("?symbol=" + "X" * 5000, 400, "symbol", id="symbol-oversized"),
    pytest.param("?symbol=G%00OG", 400, "symbol", id="symbol-hostile"),
    pytest.param("?since=yesterday", 400, "unknown field", id="unknown-parameter"),
])
async def test_get_fills_serves_the_ledger_and_refuses_bad_queries(backend, query, status, expected):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    agent = await open_agent(backend)
    await agent.ledger.record([filled("a", minutes=1), filled("b", symbol="MSFT", minutes=2), filled("c", minutes=3)])
    app = web.Application()
    app.add_routes(agent.routes())
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/v1/fills" + query)
        body = await response.json()
    await agent.close()
    assert response.status == status
    if status == 200:
        assert [f["order_id"] for f in body["fills"]] == expected and body["count"] == 3
    else:
        assert expected in body["error"]
