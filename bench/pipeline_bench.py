"""End-to-end throughput: tradeflow (six services and the recorder, every feature on) beside the raw
nats-py ceiling (bench/baselines/raw.py), on the same server build, bars and topology, in one run.

Each system gets fresh servers; the bench publishes the same bars (with the data service's ids and
envelope) as fast as the server takes them, and the clock runs from the first publish until every
consumer of the system has drained. Throughput is the stream's events over that time.

    .venv/bin/python bench/pipeline_bench.py [--symbols 5] [--bars-per-symbol 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import nats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts.envelope import trace_id_for  # noqa: E402
from contracts.subjects import PIPELINE_STREAM  # noqa: E402
from services import observe, registry  # noqa: E402
from services.data.service import bar_id  # noqa: E402
from services.data.sources import synthetic  # noqa: E402
from services.runtime.config import RuntimeSettings  # noqa: E402
from services.runtime.publish import Publisher, envelope_out  # noqa: E402
from services.runtime.topology import ensure_streams  # noqa: E402
from services.stack import Stack  # noqa: E402
from services.supervisor import Proc  # noqa: E402

RAW_HOPS = ("strategy", "quant", "risk", "execution", "audit")


async def feed(nc, bars) -> None:
    """Publish every bar as the data service would (its id, envelope and subject), 1,024 in flight."""
    publisher = Publisher(nc.jetstream(), timeout=30, window=1024)
    out = [envelope_out(b, service="data", event_id=bar_id(b), trace_id=trace_id_for(bar_id(b)), causation_id=None)
           for b in bars]
    for start in range(0, len(out), 2048):
        await publisher.publish(out[start:start + 2048])


async def drained(jsm, consumers, started: float, timeout: float = 600) -> float:
    """Seconds from `started` until the stream stops growing and every named consumer is idle."""
    await observe.wait_drained(jsm, consumers, timeout=timeout, settle=0.1)
    return time.monotonic() - started


async def run_raw(home: Path, bars) -> dict:
    stack = Stack(home, services=())
    await stack.start()
    nc = await nats.connect(stack.nats_url)
    try:
        await ensure_streams(nc.jsm(), RuntimeSettings())
        for hop in RAW_HOPS:
            argv = [sys.executable, str(ROOT / "bench" / "baselines" / "raw.py"), hop, stack.nats_url]
            await stack.supervisor.start(Proc(f"raw-{hop}", argv, dict(os.environ), stack.logs / f"raw-{hop}.log"))
        durables = [f"raw-{hop}" for hop in RAW_HOPS]
        while not await _all_exist(nc.jsm(), durables):
            await asyncio.sleep(0.1)
        started = time.monotonic()
        await feed(nc, bars)
        seconds = await drained(nc.jsm(), durables, started)
        events = (await nc.jsm().stream_info(PIPELINE_STREAM)).state.messages
    finally:
        await nc.close()
        await stack.stop()
    return {"events": events, "seconds": seconds}


async def run_tradeflow(home: Path, bars) -> dict:
    stack = Stack(home)   # every service and the recorder; the data service has no source: the bench feeds
    await stack.start()
    nc = await nats.connect(stack.nats_url)
    try:
        started = time.monotonic()
        await feed(nc, bars)
        seconds = await drained(nc.jsm(), registry.DURABLES, started)
        events = (await nc.jsm().stream_info(PIPELINE_STREAM)).state.messages
    finally:
        await nc.close()
        await stack.stop()
    return {"events": events, "seconds": seconds}


async def _all_exist(jsm, durables) -> bool:
    names = {info.name for info in await jsm.consumers_info(PIPELINE_STREAM)}
    return set(durables) <= names


async def main(args) -> None:
    bars = synthetic([f"SYM{i}" for i in range(args.symbols)], args.bars_per_symbol, seed=7)
    results = {}
    for name, run in (("raw", run_raw), ("tradeflow", run_tradeflow)):
        with tempfile.TemporaryDirectory(prefix=f"tradeflow-bench-{name}-") as tmp:
            results[name] = await run(Path(tmp), bars)
    print(f"{len(bars):,} bars over {args.symbols} symbols, published as fast as the server takes them")
    print(f"{'system':<12}{'events':>10}{'seconds':>10}{'events/s':>12}")
    for name, r in results.items():
        print(f"{name:<12}{r['events']:>10,}{r['seconds']:>10.2f}{r['events'] / r['seconds']:>12,.0f}")
    raw, tf = (results[n]["events"] / results[n]["seconds"] for n in ("raw", "tradeflow"))
    print(f"tradeflow / raw throughput: {tf / raw:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--bars-per-symbol", type=int, default=4000)
    asyncio.run(main(parser.parse_args()))
