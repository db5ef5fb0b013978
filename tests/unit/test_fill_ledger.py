"""The execution fill ledger (real SQLite files): one fill per order id, and the source of truth after a crash."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest

from contracts.codec import Incoming
from contracts.envelope import Envelope
from contracts.errors import ConfigError
from contracts.events import BarReceived, Event, OrderApproved, OrderFilled
from contracts.subjects import STAGES, stage_of, subject_for
from services.execution.ledger import FillLedger
from services.execution.logic import BrokerParams
from services.execution.service import ExecutionAgent
from services.runtime.agent import AgentContext, Output, output_id

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


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


def filled(order_id: str, price: float = 100.0) -> OrderFilled:
    return OrderFilled(symbol="GOOG", ts=TS, order_id=order_id, side="buy", quantity=10.0, price=price, commission=1.0)


async def open_agent(path: Path, **params) -> ExecutionAgent:
    agent = ExecutionAgent(BrokerParams(**params), str(path))
    await agent.open(AgentContext(cache=None, data_dir=path.parent, metrics=None))
    return agent


async def batch(agent: ExecutionAgent, *inputs: Incoming) -> list[Output]:
    """What the runtime does with one batch, up to publishing: prepare, handle each, record (the fills, each
    with its id key and cause)."""
    await agent.prepare(list(inputs))
    out = [f for inc in inputs for f in agent.handle(inc, TS)]
    await agent.record()
    return out


async def test_a_fill_is_recorded_once_per_order_id(tmp_path):
    ledger = await FillLedger.open(tmp_path / "fills.sqlite")
    try:
        assert await ledger.record([filled("a"), filled("b")]) == 2
        assert await ledger.record([filled("a", price=999.0), filled("c")]) == 1   # "a" keeps its first fill
        found = await ledger.lookup(["a", "c", "missing"])
        assert found == {"a": filled("a"), "c": filled("c")}
        assert await ledger.count() == 3
        assert [f.order_id for f in await ledger.recent(2)] == ["c", "b"]
        await ledger.record([filled(f"id-{i}") for i in range(0, 2000, 2)])
        found = await ledger.lookup([f"id-{i}" for i in range(2000)])   # more ids than one statement binds
        assert sorted(found) == sorted(f"id-{i}" for i in range(0, 2000, 2))
    finally:
        await ledger.close()


async def test_a_fill_recorded_but_never_published_is_replayed_not_refilled(tmp_path):
    path = tmp_path / "fills.sqlite"
    first = await open_agent(path, fill_price="close", slippage_bps=0)
    [original] = await batch(first, incoming(order(), "e-1"))
    await first.close()   # the process dies here: the fill is in the ledger, the publish never happened
    # restarted with other settings: the redelivered order gets the recorded fill, not a new one
    second = await open_agent(path, fill_price="close", slippage_bps=50, commission_rate=0.01)
    try:
        assert await batch(second, incoming(order(), "e-1")) == [original]
        assert second.broker.holdings["GOOG"].quantity == 10.0
        assert second.broker.cash == pytest.approx(100_000 - original.event.commission)
        assert await batch(second, incoming(order(), "e-1-again")) == []   # the same order id: nothing
        assert await second.ledger.count() == 1
    finally:
        await second.close()


async def test_an_order_waiting_for_its_bar_takes_the_recorded_fill_of_that_bar(tmp_path):
    path = tmp_path / "fills.sqlite"
    first = await open_agent(path)
    assert await batch(first, incoming(order(), "e-1")) == []           # waits for the next bar's open
    [original] = await batch(first, incoming(bar(1, 101.0), "b-1"))
    assert (original.event.price, original.event.ts) == (101.0, TS + timedelta(days=1))
    await first.close()
    # rebuilt with the order (acknowledged) but not the bar (its batch died after the ledger write)
    second = await open_agent(path, slippage_bps=100)
    try:
        second.handle(incoming(order(), "e-1"), TS)
        assert await batch(second, incoming(bar(1, 101.0), "b-1")) == [original]
    finally:
        await second.close()


async def test_a_recorded_fill_published_again_from_another_input_keeps_its_event_id(tmp_path):
    """A state that lost the bar an order was filled on (its mark gone with Redis) fills the order again on
    a later bar: the ledger gives the recorded fill, and its event id is the order's fill's, whichever input
    it comes from, so the stream's duplicate window drops it (an id from the bar made it a second fill)."""
    path = tmp_path / "fills.sqlite"
    first = await open_agent(path)
    await batch(first, incoming(order(), "e-1"))
    [original] = await batch(first, incoming(bar(1, 101.0), "b-1"))
    await first.close()
    second = await open_agent(path)
    try:
        second.handle(incoming(order(), "e-1"), TS)   # folded in; the bar it was filled on was not
        [again] = await batch(second, incoming(bar(2, 105.0), "b-2"))
        assert again == original
        ids = {output_id(first.name, "b-1", 0, original), output_id(second.name, "b-2", 0, again),
               output_id(second.name, "e-1", 0, again)}
        assert len(ids) == 1, ids
    finally:
        await second.close()


async def test_the_ledger_stays_empty_when_nothing_fills(tmp_path):
    agent = await open_agent(tmp_path / "fills.sqlite", fill_price="close")
    try:
        await batch(agent, incoming(bar(1, 100.0), "b-1"))
        assert await agent.ledger.count() == 0
    finally:
        await agent.close()


@pytest.mark.parametrize("kind", ["missing-folder", "not-a-database"])
async def test_a_ledger_that_cannot_be_opened_is_a_clear_error(tmp_path, kind):
    path = tmp_path / "nope" / "fills.sqlite"
    if kind == "not-a-database":
        path = tmp_path / "fills.sqlite"
        path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match=f"execution ledger {path}"):
        await FillLedger.open(path)


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
async def test_get_fills_serves_the_ledger_and_refuses_bad_queries(tmp_path, query, status, expected):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    agent = await open_agent(tmp_path / "fills.sqlite")
    await agent.ledger.record([filled("a"), msgspec.structs.replace(filled("b"), symbol="MSFT"), filled("c")])
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


def test_a_process_that_failed_to_open_its_ledger_still_exits(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "fills.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    script = ("import asyncio, sys\nfrom services.execution.ledger import FillLedger\n"
              f"try:\n    asyncio.run(FillLedger.open(__import__('pathlib').Path({str(path)!r})))\n"
              "except Exception as exc:\n    print(type(exc).__name__)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ConfigError"
