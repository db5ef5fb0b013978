"""replay.whatif: recorded GOOG history re-run through the agents' logic, with the same and with other settings.

The store is written the way the recorder would have written a live run: every event of a
`simulate` run with its id, subject, exact JSON body, causation and trace, bars first in the
stream (the data service runs ahead of the agents).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest

from contracts.codec import decode_body, encode
from contracts.envelope import REPLAY_OF, REPLAY_RUN, derive_id
from contracts.errors import ConfigError
from contracts.events import BarReceived, OrderApproved, OrderFilled, SignalGenerated
from replay.simulated import as_recorded as recorded_rows
from replay.store import StoredEvent, open_store
from replay.whatif import WhatIf, WhatIfError, load_recorded, overrides_env, whatif
from replay.whatif_report import NO_DIFFERENCES, format_diff
from services import registry
from services.audit.logic import summary
from services.data.service import DataSettings, bar_id, load_bars
from services.data.sources import synthetic
from services.offline.backtest import settings_env
from services.offline.simulate import Simulation, simulate

pytest.importorskip("backtesting")  # ships the GOOG bars

ALL_IN = settings_env(strategy="sma_cross", params=("fast=10", "slow=20"), cash=10_000, commission=0.002,
                      sizing="all_in", fill_price="next_open")
FIXED = settings_env(strategy="sma_cross", params=("fast=10", "slow=20"), cash=10_000, commission=0.002,
                     sizing="fixed:10", fill_price="next_open")
RECORDED_AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def run(bars: list[BarReceived], env: dict[str, str]) -> Simulation:
    return simulate(bars, **{name: registry.build(name, env) for name in registry.CONSUMERS})


def as_recorded(sim: Simulation) -> list[StoredEvent]:
    return recorded_rows(sim, source="recorded", recorded_at=RECORDED_AT)


async def record(path: Path, sim: Simulation) -> Path:
    async with open_store(path) as store:
        await store.append(as_recorded(sim))
    return path


def of_kind(w: WhatIf, stage: str, kind: str) -> set[str]:
    return {d.key for d in w.differences if d.stage == stage and d.kind == kind}


@pytest.fixture(scope="module")
def goog() -> list[BarReceived]:
    return load_bars(DataSettings(source="csv", files=["GOOG"]))


@pytest.fixture(scope="module")
def goog_run(goog) -> Simulation:
    return run(goog, ALL_IN)


@pytest.fixture
async def store(tmp_path, goog_run):
    async with open_store(await record(tmp_path / "events.sqlite", goog_run)) as opened:
        yield opened


async def test_same_settings_reproduce_the_record(store, goog):
    recorded = await load_recorded(store)
    assert recorded.bars == [(bar_id(bar), bar) for bar in goog]
    assert len(recorded.outputs) == 4 * 94 and not recorded.skipped
    seen: list[int] = []
    w = whatif(recorded, ALL_IN, progress=seen.append)   # what the command's progress bar hears
    assert seen == [*range(256, len(goog), 256), len(goog)]
    assert w.identical and w.differences == ()
    assert {s.stage: (s.recorded, s.simulated) for s in w.stages if s.recorded} == {
        stage: (94, 94) for stage in ("signals_ready", "validated_ready", "approved_ready", "executed_ready")}
    assert w.before == w.after
    assert (w.after.equity, w.after.trades, w.after.fills) == (pytest.approx(56_263.52, abs=0.005), 93, 94)
    assert NO_DIFFERENCES in format_diff(w)


async def test_other_parameters_give_what_a_fresh_run_gives(store, goog, goog_run):
    env = overrides_env(ALL_IN, params=("fast=5", "slow=30"))
    w = whatif(await load_recorded(store), env)
    fresh = run(goog, env)
    for cls, stage in ((SignalGenerated, "signals_ready"), (OrderFilled, "executed_ready")):  # fills: by order
        old, new = ({getattr(e, "order_id", i): e for i, e in sim.events if isinstance(e, cls)}
                    for sim in (goog_run, fresh))
        assert of_kind(w, stage, "added") == new.keys() - old.keys()
        assert of_kind(w, stage, "removed") == old.keys() - new.keys()
        assert of_kind(w, stage, "changed") == {k for k in old.keys() & new.keys() if old[k] != new[k]}
    assert of_kind(w, "signals_ready", "added")
    assert w.after.equity == summary(fresh.audit.report())["equity"]
    assert w.before.equity == summary(goog_run.audit.report())["equity"] == pytest.approx(56_263.52, abs=0.005)
    assert w.after.trades == len(fresh.audit.report().trades.closed) != w.before.trades
    text = format_diff(w)
    assert "first 20 of" in text and "equity" in text and NO_DIFFERENCES not in text
    json.dumps(w.to_dict())  # JSON-able as it is


async def test_a_tighter_limit_turns_approvals_into_rejections(tmp_path, goog):
    async with open_store(await record(tmp_path / "fixed.sqlite", run(goog, FIXED))) as store:
        recorded = await load_recorded(store)
    w = whatif(recorded, overrides_env(FIXED, sets=("TRADEFLOW_RISK_MAX_POSITION=5",)))
    counts = {s.stage: s for s in w.stages}
    approved = {i for i, e in recorded.outputs if isinstance(e, OrderApproved)}   # the same ids as the rejections
    assert len(approved) == counts["approved_ready"].recorded > 0
    assert of_kind(w, "approved_ready", "removed") == approved == of_kind(w, "rejected.risk", "added")
    assert {d.simulated.rule for d in w.differences if d.stage == "rejected.risk"} == {"max_position"}
    assert counts["executed_ready"].removed == counts["executed_ready"].recorded and w.after.fills == 0
    assert all(counts[s].added == counts[s].removed == counts[s].changed == 0
               for s in ("signals_ready", "validated_ready", "rejected.quant"))
    assert w.before.fills > 0 and w.after.equity == 10_000


async def test_several_symbols_interleave_as_the_pipeline_saw_them(tmp_path):
    bars = synthetic(["BBB", "AAA", "CCC"], 300, seed=3)  # all-in on three symbols: one cash for all
    sim = run(bars, ALL_IN)
    async with open_store(await record(tmp_path / "three.sqlite", sim)) as store:
        recorded = await load_recorded(store)
        assert recorded.bars == [(bar_id(bar), bar) for bar in bars]
        assert whatif(recorded, ALL_IN).identical
        only = await load_recorded(store, symbols=["AAA"])
        by_time = await load_recorded(store, symbols=["AAA"], by="time")  # recorded at bar time here
    assert (by_time.bars, by_time.outputs) == (only.bars, only.outputs)
    assert {bar.symbol for _, bar in only.bars} == {e.symbol for _, e in only.outputs} == {"AAA"}


async def test_a_late_bar_is_refused_again_as_the_pipeline_refused_it(store, goog):
    """A bar published after the others with an earlier time: live, strategy dead-lettered it (out of order).
    In stream order the re-run refuses it too; in time order it would have changed the windows."""
    ts = datetime(2008, 6, 15, 12, tzinfo=timezone.utc)  # a Sunday, between two recorded bars
    late = BarReceived(symbol="GOOG", ts=ts, open=500.0, high=900.0, low=100.0, close=900.0)
    last = await store.last_seq()
    await store.append([StoredEvent(id="late-bar", type="tradeflow.market_bar.v1", subject="data_ready.GOOG",
                                    stage="data_ready", symbol="GOOG", source="external", time=RECORDED_AT,
                                    event_ts=ts, trace_id="late", stream_seq=last + 1, body=encode(late),
                                    recorded_at=RECORDED_AT)])
    recorded = await load_recorded(store)
    assert recorded.bars[-1] == ("late-bar", late)
    w = whatif(recorded, ALL_IN)
    assert w.identical and w.dead_letters == {"dlq.strategy": 1} and w.before == w.after


async def test_a_replay_recorded_in_the_same_store_is_its_own_recording(store, goog):
    """Replayed bars carry the run in a header (and new ids): the original recording is read without them."""
    originals = [row async for row in store.query(subjects=["data_ready.>"], limit=100)]
    replayed = [msgspec.structs.replace(row, id=derive_id("replay", f"run-1:{row.id}", 0), causation_id=row.id,
                                        stream_seq=row.stream_seq + 100_000,
                                        headers=row.headers | {REPLAY_RUN: "run-1", REPLAY_OF: row.id})
                for row in originals]
    await store.append(replayed)
    assert whatif(await load_recorded(store), ALL_IN).identical
    replay = await load_recorded(store, run="run-1")
    assert [i for i, _ in replay.bars] == [row.id for row in replayed] and "replay run run-1" in replay.window


async def test_a_window_takes_the_outputs_its_bars_caused(store, goog, goog_run):
    since, until = datetime(2008, 1, 1, tzinfo=timezone.utc), datetime(2009, 1, 1, tzinfo=timezone.utc)
    injected = StoredEvent(id="typed-by-hand", type="tradeflow.signal.v1", subject="signals_ready.GOOG",
                           stage="signals_ready", symbol="GOOG", source="external", time=since, event_ts=since,
                           trace_id="t", body=b'{"symbol":"GOOG","ts":"2008-01-02T00:00:00Z","side":"buy",'
                           b'"strength":1,"price":600,"strategy":"manual"}', recorded_at=RECORDED_AT)
    await store.append([injected])
    recorded = await load_recorded(store, since=since, until=until)
    bars = [bar_id(bar) for bar in goog if since <= bar.ts < until]
    assert [i for i, _ in recorded.bars] == bars
    signals = {i for i, e in recorded.outputs if isinstance(e, SignalGenerated)}
    assert signals == {i for i, e in goog_run.events if isinstance(e, SignalGenerated) and goog_run.causes[i] in bars}
    assert "typed-by-hand" not in signals
    fills = [e for _, e in recorded.outputs if isinstance(e, OrderFilled)]
    approved = {e.order_id for _, e in recorded.outputs if isinstance(e, OrderApproved)}
    assert fills and all(f.order_id in approved and since <= f.ts < until for f in fills)
    by_time = await load_recorded(store, since=since, until=until, by="time")  # recorded at bar time here
    assert (by_time.bars, by_time.outputs) == (recorded.bars, recorded.outputs)


async def test_fills_are_matched_by_order_whichever_input_made_them(tmp_path, goog, goog_run):
    """Live, bars run ahead: execution usually fills an order when the order comes (simulate: at the next
    bar), so the recorded fill's id derives from the order, not the bar; the fill itself is the same."""
    orders = {e.order_id: i for i, e in goog_run.events if isinstance(e, OrderApproved)}   # order id -> its event
    rows = []
    for row in as_recorded(goog_run):
        if row.stage == "executed_ready":
            order = orders[decode_body("executed_ready", row.body).order_id]
            row = msgspec.structs.replace(row, id=derive_id("execution", order, 0), causation_id=order)
        rows.append(row)
    async with open_store(tmp_path / "live.sqlite") as store:
        await store.append(rows)
        w = whatif(await load_recorded(store), ALL_IN)
    assert w.identical and w.before == w.after and w.after.fills == 94


@pytest.mark.parametrize("stage, corrupt, reason", [
    pytest.param("data_ready", lambda body: body[:30], "malformed JSON", id="truncated-bar"),
    pytest.param("signals_ready", lambda body: body[:30], "malformed JSON", id="truncated-signal"),
    pytest.param("signals_ready", lambda body: body.replace(b'"strength":', b'"strength":-'),
                 "invalid tradeflow.signal.v1", id="signal-out-of-range"),
    pytest.param("signals_ready", lambda body: body.replace(b'"GOOG"', b'"MSFT"'), "symbol 'MSFT'",
                 id="signal-of-another-symbol"),
])
async def test_a_corrupt_row_is_skipped_and_reported(tmp_path, goog, goog_run, stage, corrupt, reason):
    path = await record(tmp_path / "events.sqlite", goog_run)
    with sqlite3.connect(path) as db:
        (victim, body), = db.execute("SELECT id, body FROM events WHERE stage = ? ORDER BY event_ts "
                                     "LIMIT 1 OFFSET 30", [stage]).fetchall()
        db.execute("UPDATE events SET body = ? WHERE id = ?", [corrupt(body), victim])
    async with open_store(path) as store:
        recorded = await load_recorded(store)
    w = whatif(recorded, ALL_IN)
    assert [s.id for s in w.skipped] == [victim] and reason in w.skipped[0].reason
    assert victim in format_diff(w)
    if stage == "signals_ready":  # the simulation makes it again; everything downstream of it matches
        assert [(d.stage, d.kind, d.key) for d in w.differences] == [("signals_ready", "added", victim)]
    else:
        assert w.bars == len(goog) - 1


async def test_an_empty_window_is_an_error(store):
    with pytest.raises(WhatIfError, match="no data_ready events in .*2030"):
        await load_recorded(store, since=datetime(2030, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(WhatIfError, match="no data_ready events in .* of AAPL"):
        await load_recorded(store, symbols=["AAPL"])


@pytest.mark.parametrize("overrides", [
    pytest.param({"params": ("fastest=3",)}, id="unknown-param"),
    pytest.param({"params": ("fast",)}, id="param-without-value"),
    pytest.param({"strategy": "moon_phase"}, id="unknown-strategy"),
    pytest.param({"sets": ("RISK_MAX_POSITION=5",)}, id="set-without-prefix"),
    pytest.param({"sets": ("TRADEFLOW_RISK_MAX_POSITION",)}, id="set-without-value"),
    pytest.param({"sets": ("TRADEFLOW_RISK_MAX_POSITON=5",)}, id="set-misspelt"),
])
def test_a_malformed_override_is_a_config_error(overrides):
    with pytest.raises(ConfigError):
        overrides_env(ALL_IN, **overrides)


@pytest.mark.parametrize("overrides", [
    pytest.param({"params": ("fast=30", "slow=5")}, id="fast-above-slow"),
    pytest.param({"sets": ("TRADEFLOW_RISK_MAX_POSITION=-1",)}, id="negative-limit"),
    pytest.param({"sets": ("TRADEFLOW_EXECUTION_FILL_PRICE=tomorrow",)}, id="unknown-fill-price"),
])
async def test_a_bad_value_is_a_config_error_when_the_agents_are_built(store, overrides):
    recorded = await load_recorded(store)
    with pytest.raises(ConfigError):
        whatif(recorded, overrides_env(ALL_IN, **overrides))


def test_another_strategy_starts_from_its_own_defaults():
    env = overrides_env(ALL_IN, strategy="macd_cross", params=("signal=5",))
    assert env["TRADEFLOW_STRATEGY_NAME"] == "macd_cross" and env["TRADEFLOW_STRATEGY_SIGNAL"] == "5"
    assert "TRADEFLOW_STRATEGY_FAST" not in env and "TRADEFLOW_STRATEGY_SLOW" not in env  # sma_cross's 10/20
    assert ALL_IN["TRADEFLOW_STRATEGY_FAST"] == "10"  # the base is not changed


async def test_whatif_only_reads_the_store(store):
    """The database and its WAL, hashed while the store is open (opening it runs its schema transaction)."""
    files = [store.path, store.path.with_name(store.path.name + "-wal")]

    def content() -> list[str]:
        return [hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else "" for f in files]

    before, count = content(), await store.count()
    whatif(await load_recorded(store), overrides_env(ALL_IN, params=("fast=5",)))
    assert content() == before and await store.count() == count
