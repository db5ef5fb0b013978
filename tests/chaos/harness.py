"""Run a deployment over a few thousand events with a fault injected mid-stream, then account for
every event: what the pure logic predicts (with the ids the runtime gives) against what the
stream holds, the event store recorded and the DLQ caught."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM, subject_for
from replay.store import SqliteEventStore
from services import observe, registry
from services.data.service import DataSettings, load_bars
from services.demo import wait_published
from services.runtime.settings import load
from services.simulate import simulate
from services.supervisor import wait_ready
from tests.chaos.conftest import RESULTS, Figures
from tests.integration.conftest import stream_messages
from tests.integration.test_pipeline import LOGIC_ENV

# acks lost in an outage come back after ack_wait: keep it short so recovery is measured, not waited on
ENV = LOGIC_ENV | {"TRADEFLOW_ACK_WAIT": "3", "TRADEFLOW_BACKOFF": "0.2,0.5,1"}
DATA = {"TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_SYMBOLS": "AAPL,MSFT,BRK.B,NVDA",
        "TRADEFLOW_DATA_BARS": "600", "TRADEFLOW_DATA_SEED": "5", "TRADEFLOW_DATA_RATE": "400"}

Fault = Callable[[object, object], Awaitable[str | None]]


def predicted():
    """Every (id, event) the pipeline must produce for DATA with ENV."""
    bars = load_bars(load(DataSettings, "TRADEFLOW_DATA_", DATA))
    return simulate(bars, **{name: registry.build(name, ENV) for name in registry.CONSUMERS})


def _key(event_id: str | None, subject: str, body: bytes | None, event=None) -> str | None:
    """What an event is matched by: its id, but a fill by its order id. A fill's id derives from the
    input that made it, its order or the bar after it, whichever reached execution last: a race."""
    if not subject.startswith("executed_ready."):
        return event_id
    return "fill:" + (event.order_id if event is not None else json.loads(body)["order_id"])


async def run_fault(make_stack, name: str, fault: Fault, *, env: dict[str, str] | None = None,
                    per_service: dict[str, dict[str, str]] | None = None, expected_dead: int = 0,
                    after: Callable[[object, object], Awaitable[None]] | None = None) -> Figures:
    """Start a deployment, inject `fault` (it returns when the fault is over, with a note), wait until
    everything has drained, account for every event (and run `after` for checks of its own), record
    and return the figures."""
    sim = predicted()
    stack, nc = await make_stack(env=ENV | (env or {}), per_service={"data": DATA, **(per_service or {})})
    note = await fault(stack, nc) or ""
    healed = time.monotonic()
    for service in stack.services:   # every process back and ready
        await wait_ready(stack.http_port(service), 60, stack.supervisor.procs[service])
    await wait_published(stack, timeout=180)
    await observe.wait_drained(nc.jsm(), registry.DURABLES, timeout=180)
    recovery = time.monotonic() - healed

    messages = await stream_messages(nc, PIPELINE_STREAM)
    enveloped = [m for m in messages if (m.headers or {}).get("ce-id")]   # not what was injected bare
    in_stream = {_key(m.headers["ce-id"], m.subject, m.data) for m in enveloped}
    expected = {_key(event_id, subject_for(event), None, event) for event_id, event in sim.events}
    lost = expected - in_stream
    fills = Counter(json.loads(m.data)["order_id"] for m in enveloped if m.subject.startswith("executed_ready."))
    duplicate_fills = sum(n - 1 for n in fills.values() if n > 1)
    async with SqliteEventStore.open(stack.home / "recorder" / "events.sqlite", read_only=True) as store:
        recorded = {e.id async for e in store.query()}
    dead = await observe.dead_letters(nc.jsm())
    figures = Figures(fault=name, events=len(expected), lost=len(lost), duplicate_fills=duplicate_fills,
                      dead_lettered=dead, recovery_s=round(recovery, 1), note=note)
    RESULTS.append(figures)

    kinds = Counter(type(event).__name__ for event_id, event in sim.events
                    if _key(event_id, subject_for(event), None, event) in lost)
    letters = [(m.subject, m.headers.get("tradeflow-dlq-reason"), m.headers.get("tradeflow-dlq-error", "")[:160])
               for m in await stream_messages(nc, DLQ_STREAM)]
    assert not lost, f"{name}: {len(lost)} events lost: {dict(kinds)}; dead letters {letters[:5]}"
    assert not duplicate_fills, f"{name}: {duplicate_fills} orders filled twice"
    assert in_stream - expected == set(), f"{name}: events nobody predicted"
    stored_keys = {_key(m.headers["ce-id"], m.subject, m.data) for m in enveloped if m.headers["ce-id"] in recorded}
    assert stored_keys == in_stream, f"{name}: events in the stream but not in the store"
    assert dead == expected_dead, f"{name}: {dead} dead letters, expected {expected_dead}"
    if after is not None:
        await after(stack, nc)
    return figures
