"""Run a deployment over a few thousand events with a fault injected mid-stream, then account for
every event: what the pure logic predicts (with the ids the runtime gives) against what the
stream holds, the event store recorded and the DLQ caught."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from contracts.codec import decode
from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM, subject_for
from services.runtime.store import open_event_store
from replay.whatif import load_recorded, whatif
from services import registry
from services.audit.logic import report
from services.data.service import DataSettings, load_bars
from services.execution.ledger import open_ledger
from services.offline.simulate import simulate
from services.ops import observe
from services.ops.demo import fill_ledger_location, wait_published
from services.ops.supervisor import http_json, wait_ready
from services.runtime.settings import load
from tests.chaos.conftest import RESULTS, Figures
from tests.integration.conftest import stream_messages
from tests.integration.test_pipeline import LOGIC_ENV

# acks lost in an outage come back after ack_wait: keep it short so recovery is measured, not waited on
ENV = LOGIC_ENV | {"TRADEFLOW_ACK_WAIT": "3", "TRADEFLOW_BACKOFF": "0.2,0.5,1"}
DATA = {"TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_SYMBOLS": "AAPL,MSFT,BRK.B,NVDA",
        "TRADEFLOW_DATA_BARS": "600", "TRADEFLOW_DATA_SEED": "5", "TRADEFLOW_DATA_RATE": "400"}

Fault = Callable[[object, object], Awaitable[str | None]]


def predicted(data: dict[str, str] = DATA):
    """Every (id, event) the pipeline must produce for `data` with ENV."""
    bars = load_bars(load(DataSettings, "TRADEFLOW_DATA_", data))
    return simulate(bars, **{name: registry.build(name, ENV) for name in registry.CONSUMERS})


def kill_plan(seed: int, kills: int, over: float, targets: Sequence[str],
              always: Sequence[str] = ("nats-server", "redis-server")) -> list[tuple[float, str]]:
    """`kills` (seconds after the start, process) pairs spread at random over `over` seconds, in time order:
    the same seed, the same plan. Each of `always` is among them at least once, so every plan compounds."""
    rng = random.Random(seed)
    names = [*always, *(rng.choice(targets) for _ in range(kills - len(always)))]
    rng.shuffle(names)
    return list(zip(sorted(round(rng.uniform(0.3, over), 2) for _ in names), names))


def _key(event_id: str | None, subject: str, body: bytes | None, event=None) -> str | None:
    """What an event is matched by: its id, but a fill by its order id. A fill's id derives from the
    input that made it, its order or the bar after it, whichever reached execution last: a race."""
    if not subject.startswith("executed_ready."):
        return event_id
    return "fill:" + (event.order_id if event is not None else json.loads(body)["order_id"])


def _differing(enveloped, predicted_events) -> list[tuple[int, str, object, object]]:
    """The stream's events whose body is not the one the logic predicts under their key (an event with the
    right id but another price, size or time: a fill made at the wrong bar, an order sized from a lost state)."""
    wanted = {_key(event_id, subject_for(event), None, event): event for event_id, event in predicted_events}
    wrong = []
    for m in enveloped:
        key = _key(m.headers["ce-id"], m.subject, m.data)
        event = wanted.get(key)
        if event is None:
            continue
        got = decode(m.subject, m.data, m.headers).event
        if got != event:
            wrong.append((m.metadata.sequence.stream, key, got, event))
    return wrong


async def run_fault(make_stack, name: str, fault: Fault, *, env: dict[str, str] | None = None,
                    data: dict[str, str] = DATA, per_service: dict[str, dict[str, str]] | None = None,
                    expected_dead: int = 0,
                    after: Callable[[object, object], Awaitable[None]] | None = None) -> Figures:
    """Start a deployment, inject `fault` (it returns when the fault is over, with a note), wait until
    everything has drained, account for every event (and run `after` for checks of its own), record
    and return the figures."""
    sim = predicted(data)
    stack, nc = await make_stack(env=ENV | (env or {}), per_service={"data": data, **(per_service or {})})
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
    async with open_event_store(stack.store_location(), read_only=True) as store:
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
    twice = [(m.metadata.sequence.stream, m.headers.get("ce-id"), m.headers.get("ce-causationid"), m.data[:200])
             for m in enveloped if m.subject.startswith("executed_ready.")
             and fills[json.loads(m.data)["order_id"]] > 1]
    assert not duplicate_fills, f"{name}: {duplicate_fills} orders filled twice: {twice}"
    assert in_stream - expected == set(), f"{name}: events nobody predicted"
    wrong = _differing(enveloped, sim.events)
    assert not wrong, f"{name}: {len(wrong)} events in the stream differ from the logic's (stream, logic): {wrong[:3]}"
    stored_keys = {_key(m.headers["ce-id"], m.subject, m.data) for m in enveloped if m.headers["ce-id"] in recorded}
    assert stored_keys == in_stream, f"{name}: events in the stream but not in the store"
    assert dead == expected_dead, f"{name}: {dead} dead letters, expected {expected_dead}: {letters[:5]}"
    await _settle_effects(stack, nc, sim, name, fills)
    if after is not None:
        await after(stack, nc)
    return figures


async def _settle_effects(stack, nc, sim, name: str, fills: Counter) -> None:
    """The accounts outside the stream: execution's fill ledger holds exactly the fills in the stream, audit's
    portfolio is the one the logic predicts, and the logic re-run over the recorded bars reproduces every
    recorded output (what `tradeflow whatif --check` checks)."""
    async with open_ledger(fill_ledger_location(stack)) as ledger:
        booked, rows = set(await ledger.lookup(list(fills))), await ledger.count()
    assert booked == set(fills) and rows == len(fills), \
        f"{name}: the fill ledger holds {rows} fills, {len(set(fills) - booked)} of the stream's missing"
    _, portfolio = await http_json(stack.http_port("audit"), "/v1/portfolio")
    expected = msgspec.json.decode(msgspec.json.encode(report(sim.audit.report())))
    differ = {k: (portfolio.get(k), v) for k, v in expected.items() if portfolio.get(k) != v}
    assert not differ, f"{name}: audit's portfolio differs from the logic's (audit, logic): {str(differ)[:1500]}"
    async with open_event_store(stack.store_location(), read_only=True) as store:
        recorded = await load_recorded(store)
    diff = await asyncio.to_thread(whatif, recorded, ENV)
    assert diff.identical, f"{name}: the recorded history differs from the logic in {len(diff.differences)} places: " \
                           f"{[(d.stage, d.kind, d.key) for d in diff.differences[:5]]}"
