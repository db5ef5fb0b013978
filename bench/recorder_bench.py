"""Does the recorder keep up with the pipeline? Figures for a ~20k-event run.

Run 1 (burst): the whole deployment over synthetic bars fed as fast as possible. The
pipeline's throughput is its events over the time until the agents have drained, the
recorder's over the time until it has.

Run 2 (paced): the same bars fed at 90 % of the bar rate the pipeline sustained in run 1,
the recorder's lag (its consumer's unacked count) sampled all along: zero lag growth means
the second half of the run shows no more lag than the first, and none at the end.

Run 3 (capacity): run 2's events already in the stream and only the recorder running: how
fast it drains a backlog. Its ratio to the pipeline's rate of run 1 is the headroom; all are
measured here, in the same run, on the same machine.

    .venv/bin/python bench/recorder_bench.py [--bars-per-symbol 3600 --symbols 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
from nats.js.errors import NotFoundError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.subjects import PIPELINE_STREAM  # noqa: E402
from replay.store import open_store  # noqa: E402
from services import registry  # noqa: E402
from services.ops.stack import Stack  # noqa: E402


async def pending(jsm, name: str) -> int:
    """Messages the consumer has not yet acked; -1 while it does not exist yet."""
    try:
        info = await jsm.consumer_info(PIPELINE_STREAM, name)
    except NotFoundError:
        return -1
    return (info.num_pending or 0) + (info.num_ack_pending or 0)


async def drained_at(jsm, names, since: float, samples: list[tuple[float, int]] | None = None) -> float:
    """Seconds from `since` until every named consumer has nothing pending (stream no longer growing)."""
    last_seq = -1
    while True:
        seq = (await jsm.stream_info(PIPELINE_STREAM)).state.last_seq
        lags = [await pending(jsm, n) for n in names]
        if samples is not None:
            samples.append((time.monotonic() - since, max(lags[-1], 0)))
        if seq == last_seq and not any(lags):
            return time.monotonic() - since
        last_seq = seq
        await asyncio.sleep(0.1)


async def live_run(home: Path, data_env: dict[str, str]) -> dict:
    stack = Stack(home, per_service_env={"data": data_env})
    await stack.start()
    nc = await nats.connect(stack.nats_url)
    jsm = nc.jsm()
    try:
        started = time.monotonic()
        samples: list[tuple[float, int]] = []
        recorder_task = asyncio.create_task(drained_at(jsm, ["recorder"], started, samples))
        pipeline_s = await drained_at(jsm, registry.CONSUMERS, started)
        recorder_s = await recorder_task
        info = (await jsm.stream_info(PIPELINE_STREAM, subjects_filter="data_ready.>")).state
        events, bars = info.messages, sum((info.subjects or {}).values())
    finally:
        await nc.close()
        await stack.stop()
    async with open_store(home / "recorder" / "events.sqlite", read_only=True) as store:
        stored = await store.count()
    return {"events": events, "bars": bars, "stored": stored, "pipeline_s": pipeline_s, "recorder_s": recorder_s,
            "samples": samples}


async def capacity_run(home: Path) -> dict:
    """The live run's stream, the recorder alone with an empty store: how fast it drains the backlog."""
    (home / "recorder" / "events.sqlite").unlink()
    for side in ("-wal", "-shm"):
        (home / "recorder" / f"events.sqlite{side}").unlink(missing_ok=True)
    stack = Stack(home, services=())
    await stack.start()   # the servers only: the stream is still there, the recorder's consumer too
    nc = await nats.connect(stack.nats_url)
    jsm = nc.jsm()
    try:
        await jsm.delete_consumer(PIPELINE_STREAM, "recorder")  # start it again from the first event
        started = time.monotonic()
        await stack.start_service("recorder", wait=False)
        seconds = await drained_at(jsm, ["recorder"], started)
        events = (await jsm.stream_info(PIPELINE_STREAM)).state.messages
        await stack.supervisor.stop("recorder")
    finally:
        await nc.close()
        await stack.stop()
    return {"events": events, "seconds": seconds}


def lag_line(samples: list[tuple[float, int]]) -> str:
    lags = [lag for _, lag in samples]
    half = len(lags) // 2
    return (f"max {max(lags):,}  median first half {statistics.median(lags[:half] or [0]):,.0f}  "
            f"median second half {statistics.median(lags[half:] or [0]):,.0f}  at the end {lags[-1]}")


async def main(args) -> None:
    symbols = ",".join(f"SYM{i}" for i in range(args.symbols))
    data_env = {"TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_SYMBOLS": symbols,
                "TRADEFLOW_DATA_BARS": str(args.bars_per_symbol), "TRADEFLOW_DATA_SEED": "7"}
    with tempfile.TemporaryDirectory(prefix="tradeflow-bench-") as tmp:
        burst = await live_run(Path(tmp) / "burst", data_env)
    bar_rate = burst["bars"] / burst["pipeline_s"]
    with tempfile.TemporaryDirectory(prefix="tradeflow-bench-") as tmp:
        paced = await live_run(Path(tmp), data_env | {"TRADEFLOW_DATA_RATE": f"{0.9 * bar_rate:.0f}"})
        cap = await capacity_run(Path(tmp))
    n = burst["events"]
    pipeline_rate, recorder_rate = n / burst["pipeline_s"], n / burst["recorder_s"]
    capacity = cap["events"] / cap["seconds"]
    print(f"events in a run            {n:,} ({burst['bars']:,} bars; stored {burst['stored']:,} and "
          f"{paced['stored']:,})")
    print(f"burst: pipeline (5 agents) {pipeline_rate:10,.0f} events/s  ({burst['pipeline_s']:.2f} s to drain)")
    print(f"burst: recorder            {recorder_rate:10,.0f} events/s  ({burst['recorder_s']:.2f} s to drain)"
          f"  ratio to pipeline {recorder_rate / pipeline_rate:.2f}")
    print(f"burst: recorder lag        {lag_line(burst['samples'])}")
    fed = paced["bars"] / paced["recorder_s"]  # the feed may not reach the rate asked for
    print(f"paced: {fed:,.0f} bars/s, {paced['events'] / paced['recorder_s']:,.0f} events/s "
          f"(asked {0.9 * bar_rate:,.0f} bars/s): recorder lag  {lag_line(paced['samples'])}")
    print(f"capacity: recorder alone  {capacity:10,.0f} events/s  ({cap['seconds']:.2f} s for {cap['events']:,})"
          f"  ratio to pipeline {capacity / pipeline_rate:.2f}")
    assert burst["stored"] == n and paced["stored"] == paced["events"], "the store does not hold every event"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--bars-per-symbol", type=int, default=3600)
    asyncio.run(main(parser.parse_args()))
