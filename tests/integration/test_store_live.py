"""The recorder against a live pipeline: every event of every stage in the store exactly once,
across a recorder killed mid-run (its unacked batch redelivered), and what the store's CLI shows."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys

import orjson
import pytest

from contracts.subjects import PIPELINE_STREAM
from replay.store import open_store
from services.ops import observe
from services.ops.supervisor import RestartPolicy, http_json
from services.registry import CONSUMERS, DURABLES
from services.risk.service import book_view
from services.runtime.store import open_event_store
from tests.integration.conftest import stream_messages, wait_for
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, predicted
from tests.stores import location_for
from tests.unit.test_backtesting_parity import PARITY_ENV

pytestmark = pytest.mark.integration

GOOG = {"TRADEFLOW_DATA_SOURCE": "csv", "TRADEFLOW_DATA_FILES": "GOOG", "TRADEFLOW_DATA_RATE": "1000"}


def tradeflow(*args: str, store) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRADEFLOW_STORE": str(store)}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


async def test_store_holds_every_event_once_across_a_killed_recorder(make_stack):
    stack, nc = await make_stack(env=PARITY_ENV, per_service={"data": GOOG, "recorder": {"TRADEFLOW_ACK_WAIT": "2"}})

    async def some_recorded() -> bool:
        _, progress = await http_json(stack.http_port("data"), "/v1/progress")
        return progress.get("published", 0) >= 600

    await wait_for(some_recorded, timeout=60, what="600 bars published")
    store_path = stack.home / "recorder" / "events.sqlite"
    # hold the store's write lock so the recorder is caught with a fetched, unacked batch; kill it then
    lock = sqlite3.connect(store_path, timeout=10)
    lock.execute("BEGIN IMMEDIATE")

    async def batch_in_hand() -> bool:
        return (await nc.jsm().consumer_info(PIPELINE_STREAM, "recorder")).num_ack_pending > 0

    await wait_for(batch_in_hand, timeout=30, what="the recorder holding unacked messages")
    assert await stack.restart_service("recorder", sig=signal.SIGKILL, wait=False) == -signal.SIGKILL
    lock.rollback()
    lock.close()
    await wait_for(lambda: _published_all(stack), timeout=120, what="every bar published")
    await observe.wait_drained(nc.jsm(), DURABLES, timeout=120)

    delivered = (await nc.jsm().consumer_info(PIPELINE_STREAM, "recorder")).delivered
    assert delivered.consumer_seq > delivered.stream_seq, "some messages were delivered to the recorder twice"
    messages = await stream_messages(nc, PIPELINE_STREAM)
    async with open_store(store_path, read_only=True) as store:
        stored = [e async for e in store.query(by="time")]
        assert await store.count() == len(stored)
    assert len(messages) == 2148 + 4 * 94
    assert len(stored) == len(messages), "every event recorded exactly once"
    by_id = {e.id: e for e in stored}
    for msg in messages:
        e = by_id[msg.headers["ce-id"]]
        assert (e.subject, e.stream_seq, e.body) == (msg.subject, msg.metadata.sequence.stream, msg.data)
        assert e.headers["traceparent"] == msg.headers["traceparent"]
    approved = {e.id: e for e in stored if e.stage == "approved_ready"}
    for fill in (e for e in stored if e.stage == "executed_ready"):   # in its order's journey, whenever it filled
        assert fill.causation_id in approved and fill.trace_id == approved[fill.causation_id].trace_id
    _, metrics = await http_json(stack.http_port("recorder"), "/v1/store")
    assert metrics["count"] == len(messages)
    assert metrics["stages"]["executed_ready"] == 94


async def _published_all(stack) -> bool:
    _, progress = await http_json(stack.http_port("data"), "/v1/progress")
    return bool(progress.get("done"))


async def test_store_commands_read_a_live_store_without_changing_it(make_stack):
    stack, nc = await make_stack(env=PARITY_ENV, per_service={"data": {**GOOG, "TRADEFLOW_DATA_RATE": "0"}})
    await wait_for(lambda: _published_all(stack), timeout=120, what="every bar published")
    await observe.wait_drained(nc.jsm(), DURABLES, timeout=120)
    store = stack.home / "recorder" / "events.sqlite"
    await stack.supervisor.stop("recorder")  # a quiet file, so its bytes can be compared
    before = hashlib.sha256(store.read_bytes()).hexdigest()

    fills = tradeflow("events", "--subject", "executed_ready.*", "--all", "--json", store=store)
    assert fills.returncode == 0, fills.stderr
    lines = [orjson.loads(line) for line in fills.stdout.splitlines()]
    assert len(lines) == 94 and {line["subject"] for line in lines} == {"executed_ready.GOOG"}

    fill = lines[10]
    journey = tradeflow("trace", fill["id"], "--json", store=store)
    assert journey.returncode == 0, journey.stderr
    stages = [orjson.loads(line)["stage"] for line in journey.stdout.splitlines()]
    assert stages[0] == "data_ready" and "approved_ready" in stages and stages[-2:] == ["executed_ready", "audit"]

    window = tradeflow("events", "--since", "2010-01-01", "--until", "2010-02-01", "--subject", "data_ready.>",
                       "--all", "--json", store=store)
    days = [orjson.loads(line)["event_ts"][:10] for line in window.stdout.splitlines()]
    assert days and days[0] >= "2010-01-01" and days[-1] < "2010-02-01" and days == sorted(days)

    for args, message in [
        (("events", "--since", "2030-01-01"), "no events match"),
        (("events", "--subject", "orders.>"), "unknown subject pattern"),
        (("events", "--subject", "data_ready.>.x"), "'>' may only be the last token"),
        (("trace", "no-such-id"), "no event or trace"),
        (("store", "export", "--since", "2030-01-01", "-o", str(stack.home / "x.jsonl")), "no events match"),
    ]:
        result = tradeflow(*args, store=store)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()[-1]) < 300
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before, "a read command changed the store"


async def test_history_aged_out_of_the_stream_is_rebuilt_from_the_store(make_stack):
    _, sim, agents = predicted(LOGIC_ENV)
    expected_book = book_view(agents["risk"].book)
    stack, nc = await make_stack(env={**LOGIC_ENV, "TRADEFLOW_REBUILD_WAIT": "2"}, per_service={"data": DATA_ENV})
    await wait_for(lambda: _published_all(stack), timeout=60, what="every bar published")
    await observe.wait_drained(nc.jsm(), DURABLES, timeout=60)
    assert (await http_json(stack.http_port("risk"), "/v1/book"))[1] == expected_book

    # only now shorten the stream's window, as `nats stream edit --max-age 1s` would: a window short
    # from the start loses what a lagging consumer has not yet read (on a loaded machine, it did)
    jsm = nc.jsm()
    config = (await jsm.stream_info(PIPELINE_STREAM)).config
    config.max_age, config.duplicate_window = 1.0, 1.0
    await jsm.update_stream(config)

    async def stream_empty() -> bool:
        return (await jsm.stream_info(PIPELINE_STREAM)).state.messages == 0

    await wait_for(stream_empty, timeout=60, what="the stream to age everything out")
    await stack.restart_service("risk", signal.SIGKILL)   # which puts the window back as configured
    assert (await http_json(stack.http_port("risk"), "/v1/book"))[1] == expected_book, "rebuilt from the store"

    store = stack.home / "recorder" / "events.sqlite"
    await stack.supervisor.stop("recorder")
    store.rename(store.with_suffix(".moved"))  # without the store, the history is in neither: risk refuses
    code, line, _ = await start_refused(stack, "risk")
    assert code == 1 and line.startswith(f"Error: TRADEFLOW_STORE: the event store {store} holds events up to "
                                         "seq 0, the stream starts at seq "), line


async def start_refused(stack, name: str) -> tuple[int, str, list[str]]:
    """Kill service `name` and start it once more, not restarted when it ends: its exit code, the last line it
    wrote and all its log. One that ended is taken out of the stack (nothing is left to stop)."""
    await stack.supervisor.stop(name, signal.SIGKILL)
    proc = stack.service_proc(name)
    proc.restart = RestartPolicy("no")
    await stack.supervisor.start(proc)
    assert proc.process is not None
    code = await asyncio.wait_for(proc.process.wait(), timeout=90)
    del stack.supervisor.procs[name]
    lines = proc.log_path.read_text().splitlines()
    return code, lines[-1], lines


BARS_AFTER = [{"symbol": "AAPL", "ts": f"2024-01-05T14:{30 + i}:00Z", "open": 100 + i, "high": 102 + i,
               "low": 99 + i, "close": 101 + i, "volume": 1000} for i in range(5)]


@pytest.mark.parametrize("kind", ["sqlite"])   # the decision on both adapters: tests/unit/test_rebuild_store.py
async def test_a_rebuild_refuses_a_store_that_missed_what_the_stream_no_longer_holds(make_stack, request, tmp_path,
                                                                                       kind):
    store = {"TRADEFLOW_STORE": location_for(kind, request, tmp_path)} if kind != "sqlite" else {}
    stack, nc = await make_stack(env={**LOGIC_ENV, **store, "TRADEFLOW_REBUILD_WAIT": "3"},
                                 per_service={"data": DATA_ENV})
    await wait_for(lambda: _published_all(stack), timeout=60, what="every bar published")
    jsm = nc.jsm()
    await observe.wait_drained(jsm, DURABLES, timeout=60)
    await stack.supervisor.stop("recorder")   # what comes next is never recorded
    for bar in BARS_AFTER:
        await nc.jetstream().publish("data_ready.AAPL", orjson.dumps(bar))
    await observe.wait_drained(jsm, CONSUMERS, timeout=60)
    floor = (await jsm.consumer_info(PIPELINE_STREAM, "risk")).ack_floor.stream_seq

    config = (await jsm.stream_info(PIPELINE_STREAM)).config   # then the stream lets it all go
    config.max_age, config.duplicate_window = 1.0, 1.0
    await jsm.update_stream(config)

    async def stream_empty() -> bool:
        return (await jsm.stream_info(PIPELINE_STREAM)).state.messages == 0

    await wait_for(stream_empty, timeout=60, what="the stream to age everything out")
    first = (await jsm.stream_info(PIPELINE_STREAM)).state.first_seq
    async with open_event_store(stack.store_location(), read_only=True) as events:
        recorded = await events.last_seq()
    assert recorded < floor < first, "risk handled events the store does not hold and the stream no longer does"

    code, line, log = await start_refused(stack, "risk")
    assert code == 1
    assert line == (f"Error: TRADEFLOW_STORE: the event store {stack.store_location()} holds events up to seq "
                    f"{recorded}, the stream starts at seq {first}: seqs {recorded + 1}..{floor} are in neither "
                    "(waited 3s for the recorder, TRADEFLOW_REBUILD_WAIT); not rebuilding a short state")
    waited = [orjson.loads(entry) for entry in log if "waits for the event store" in entry]
    assert [(w["needs_up_to_seq"], w["store_holds_up_to_seq"]) for w in waited] == [(floor, recorded)]


async def test_a_fill_made_on_a_later_bar_is_in_its_orders_trace(make_stack):
    slow = {"TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_SYMBOLS": "AAPL", "TRADEFLOW_DATA_BARS": "40",
            "TRADEFLOW_DATA_SEED": "3", "TRADEFLOW_DATA_RATE": "6"}   # each order is in before its next bar
    stack, nc = await make_stack(env={"TRADEFLOW_STRATEGY_FAST": "2", "TRADEFLOW_STRATEGY_SLOW": "4"},
                                 per_service={"data": slow})
    await wait_for(lambda: _published_all(stack), timeout=60, what="every bar published")
    await observe.wait_drained(nc.jsm(), DURABLES, timeout=60)
    async with open_store(stack.home / "recorder" / "events.sqlite", read_only=True) as store:
        stored = [e async for e in store.query(by="time")]
    approved = {e.id: e for e in stored if e.stage == "approved_ready"}
    fills = [e for e in stored if e.stage == "executed_ready"]
    assert len(fills) == len(approved) > 2
    for fill in fills:
        assert fill.causation_id in approved and fill.trace_id == approved[fill.causation_id].trace_id
        bar = next(e for e in stored if e.stage == "data_ready" and e.trace_id == fill.trace_id)
        assert bar.event_ts < fill.event_ts, "filled at a later bar's open, yet traced to its own bar"
