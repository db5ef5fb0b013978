"""What-if throughput, each figure against a baseline measured in the same run.

    .venv/bin/python bench/whatif_bench.py [--bars 20000] [--symbols 4] [--repeat 3] [--profile]

Builds an event store in a temporary folder from synthetic bars (`services.data.sources.synthetic`,
`--symbols` symbols of minute bars) and every event a `simulate` run over them makes, written as
the recorder would, then times, best of `--repeat`:

  (a) load_recorded (events/s) against a raw sqlite3 SELECT of every row, and the store's own query;
  (b) whatif (bars/s) against a plain `simulate` over the same bars in memory.

Targets on a 2-core machine: store read >= 50,000 events/s, whatif >= 20,000 bars/s. Below the
whatif target (or with --profile) it prints where whatif's time goes (cProfile).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from contracts.events import BarReceived
from replay.simulated import as_recorded
from replay.store import StoredEvent, open_store
from replay.whatif import load_recorded, whatif
from services import registry
from services.data.sources import synthetic
from services.offline.backtest import settings_env
from services.offline.simulate import Simulation, simulate

STORE_READ_TARGET = 50_000   # events/s
WHATIF_TARGET = 20_000       # bars/s
ENV = settings_env(strategy="sma_cross", params=(), cash=100_000, commission=0.001, sizing="all_in",
                   fill_price="next_open")


def run(bars: list[BarReceived]) -> Simulation:
    """The agents' logic over `bars`, with the bench's settings."""
    return simulate(bars, **{name: registry.build(name, ENV) for name in registry.CONSUMERS})


def best(repeat: int, call: Callable[[], object]) -> tuple[float, object]:
    """The shortest of `repeat` timed calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return min(times), result


def raw_select(path: Path) -> int:
    """Every row, all columns, in the store's order: what SQLite alone costs."""
    with sqlite3.connect(path) as db:
        return len(db.execute("SELECT * FROM events ORDER BY event_ts, stream_seq, id").fetchall())


def line(label: str, count: int, unit: str, seconds: float, baseline: float | None = None,
         target: int | None = None) -> str:
    """One figure: count, time, rate, and its ratio to the baseline rate and the target."""
    rate = count / seconds
    text = f"  {label:<34}{count:>8,} {unit:<7}{seconds * 1000:>9.1f} ms {rate:>12,.0f} {unit}/s"
    if baseline is not None:
        text += f"   {rate / baseline:>5.2f}x baseline"
    if target is not None:
        text += f"   target {target:,}: {'ok' if rate >= target else 'MISSED'}"
    return text


async def bench(args: argparse.Namespace, folder: Path) -> None:
    """Build the store, then time reading it and re-running it, each beside its baseline."""
    bars = synthetic([f"S{n:03d}" for n in range(args.symbols)], args.bars // args.symbols, seed=7)
    path = folder / "events.sqlite"
    sim = run(bars)
    async with open_store(path) as store:
        await store.append(as_recorded(sim, source="bench"))
    events = len(sim.events)
    outputs = ", ".join(f"{k} {n:,}" for k, n in sorted(sim.counts.items()) if k != "data_ready")
    print(f"store: {events:,} events: {len(bars):,} bars of {args.symbols} symbols; {outputs}")

    async with open_store(path) as store:
        async def query_all() -> list[StoredEvent]:
            return [row async for row in store.query(by="event_ts")]

        async def replay_read() -> list[StoredEvent]:   # what `tradeflow replay` reads by default
            return [row async for row in store.query(subjects=["data_ready.>"], by="event_ts")]

        raw, _ = best(args.repeat, lambda: raw_select(path))
        queried, _ = await best_async(args.repeat, query_all)
        replay_s, replayed = await best_async(args.repeat, replay_read)
        loaded, recorded = await best_async(args.repeat, lambda: load_recorded(store))
    assert len(recorded.bars) + len(recorded.outputs) == events, "load_recorded lost events"
    assert len(replayed) == len(bars), "the replay read lost bars"
    print("(a) reading the store")
    print(line("raw sqlite3 SELECT (baseline)", events, "events", raw))
    print(line("store.query (StoredEvent rows)", events, "events", queried, events / raw))
    print(line("replay read (data_ready.>)", len(bars), "events", replay_s, events / raw, STORE_READ_TARGET))
    print(line("load_recorded (decoded, by cause)", events, "events", loaded, events / raw, STORE_READ_TARGET))

    plain, _ = best(args.repeat, lambda: run(bars))
    ran, result = best(args.repeat, lambda: whatif(recorded, ENV))
    assert result.identical, "the same settings must reproduce the record"
    print("(b) re-running the agents")
    print(line("simulate in memory (baseline)", len(bars), "bars", plain))
    print(line("whatif (simulate + diff + before)", len(bars), "bars", ran, len(bars) / plain, WHATIF_TARGET))
    if args.profile or len(bars) / ran < WHATIF_TARGET:
        profile(lambda: whatif(recorded, ENV))


async def best_async(repeat: int, call: Callable[[], Awaitable[object]]) -> tuple[float, object]:
    """The shortest of `repeat` timed awaits, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = await call()
        times.append(time.perf_counter() - start)
    return min(times), result


def profile(call: Callable[[], object]) -> None:
    """Where the time of one call goes: the top functions by own time, then by cumulative time."""
    profiler = cProfile.Profile()
    profiler.runcall(call)
    stats = pstats.Stats(profiler)
    print("\nwhatif profile, by own time:")
    stats.sort_stats("tottime").print_stats(18)
    print("whatif profile, by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=20_000)
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(bench(args, Path(folder)))


if __name__ == "__main__":
    main()
