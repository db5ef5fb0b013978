"""The runtime under load: off-loop compute and the cache's hit path, each against a baseline in the same run.

    .venv/bin/python bench/runtime_bench.py [--features 500] [--size 20000] [--gets 20000]

(a) `--features` CPU-heavy feature computations (EMAs, rolling volatility and an RSI over
    `--size` closes, in Python) all in flight at once through the service's ComputePool
    (a process pool, TRADEFLOW_POOL_* defaults), while the event loop's lag is sampled every
    millisecond; against the same computations run one after the other in the process.
    Targets: loop-lag p95 < 2 ms while they run; done >= 1.7x faster than sequentially.
(b) `Cache.get_or_compute` on keys already cached, against a private redis-server: gets/s
    one at a time and with 64 callers at once (one service's tasks), with the near cache in the
    process off (every get a round trip) and on (the default). Target >= 10,000 gets/s.
(c) The data service's poller (services/data/polling.py) over `--symbols` symbols whose provider
    takes `--latency` seconds to answer, publishing each round's bars to a private nats-server
    as the service does: `--rounds` polls with the symbols asked all at once (the default)
    against the same polls asked one symbol after another (TRADEFLOW_DATA_POLL_CONCURRENCY=1).
    Target: 5 symbols at 100 ms >= 4x faster than sequentially.
(d) The strategy service's handler over a backlog (`--bars` bars of 5 symbols, MACD crossover,
    batches of 256 as the worker takes them), its features computed in the process
    (TRADEFLOW_STRATEGY_OFFLOAD=off) against folded in the process pool (on), with the event
    loop's lag sampled meanwhile. No target in the issue; it shows what offloading buys.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import nats
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts import envelope as ce  # noqa: E402
from services.data.polling import Poller  # noqa: E402
from services.data.providers import SimulatedFeed  # noqa: E402
from services.data.service import bar_id  # noqa: E402
from services.data.sources import synthetic  # noqa: E402
from services.ops.stack import Stack  # noqa: E402
from services.runtime.cache import Cache, CacheSettings  # noqa: E402
from services.runtime.config import RuntimeSettings  # noqa: E402
from services.runtime.metrics import Metrics, quantile  # noqa: E402
from services.runtime.pool import ComputePool, PoolSettings  # noqa: E402
from services.runtime.publish import Publisher, envelope_out  # noqa: E402
from services.runtime.topology import ensure_streams  # noqa: E402
from services.strategy.service import build as build_strategy  # noqa: E402
from tests.unit.test_strategy import incoming  # noqa: E402

LAG_TARGET_MS, SPEEDUP_TARGET, GETS_TARGET, POLL_TARGET = 2.0, 1.7, 10_000, 4.0


def features(seed: int, size: int) -> dict[str, float]:
    """EMAs, rolling volatility and a 14-period RSI over a random walk of `size` closes (pure Python: CPU-bound)."""
    rng = random.Random(seed)
    closes, price = [], 100.0
    for _ in range(size):
        price *= math.exp(rng.gauss(0, 0.01))
        closes.append(price)
    out = {}
    for span in (12, 26, 50):
        alpha, ema = 2 / (span + 1), closes[0]
        for c in closes:
            ema += alpha * (c - ema)
        out[f"ema{span}"] = ema
    rets = [math.log(b / a) for a, b in zip(closes, closes[1:])]
    window = rets[-252:]
    mean = sum(window) / len(window)
    out["vol"] = math.sqrt(sum((r - mean) ** 2 for r in window) / (len(window) - 1) * 252)
    gains = [max(r, 0.0) for r in rets[-14:]]
    losses = [max(-r, 0.0) for r in rets[-14:]]
    out["rsi"] = 100 - 100 / (1 + (sum(gains) / max(sum(losses), 1e-12)))
    return out


async def sample_lag(samples: list[float], stop: asyncio.Event, interval: float = 0.001) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(interval)
        samples.append(max(0.0, loop.time() - start - interval))


def p95_ms(samples: list[float]) -> float:
    return quantile(sorted(samples), 0.95) * 1000 if samples else 0.0


async def offloop(args) -> None:
    t = time.perf_counter()
    for i in range(args.features):
        features(i, args.size)
    sequential = time.perf_counter() - t

    pool = ComputePool(PoolSettings(), Metrics("bench"))
    await pool.compute("warm-up", features, 0, 10)   # start the workers before the clock
    lags: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_lag(lags, stop))
    t = time.perf_counter()
    results = await asyncio.gather(*(pool.compute("features", features, i, args.size) for i in range(args.features)))
    pooled = time.perf_counter() - t
    stop.set()
    await sampler
    await pool.close()
    assert results[7] == features(7, args.size), "the pool computes what the process computes"
    lag = p95_ms(lags)
    print(f"(a) {args.features} feature computations over {args.size:,} closes, all in flight "
          f"({pool.settings.workers} worker processes)")
    print(f"    sequential in the process   {sequential:7.2f} s")
    print(f"    through the pool            {pooled:7.2f} s   {sequential / pooled:.2f}x  "
          f"(target >= {SPEEDUP_TARGET}x: {'met' if sequential / pooled >= SPEEDUP_TARGET else 'NOT met'})")
    print(f"    event-loop lag meanwhile    p95 {lag:.3f} ms, max {max(lags) * 1000:.3f} ms "
          f"over {len(lags):,} samples  "
          f"(target p95 < {LAG_TARGET_MS} ms: {'met' if lag < LAG_TARGET_MS else 'NOT met'})")


async def hit_rates(redis: Redis, settings: CacheSettings, gets: int) -> tuple[float, float, int]:
    """gets/s on cached keys, one caller and 64 at once; and how many computations it took."""
    cache = Cache(redis, settings, Metrics("bench"))
    keys = [f"SYM{i}" for i in range(100)]

    async def value() -> dict:
        return {"regime": "calm", "volatility": 0.12}

    async def caller(n: int, offset: int) -> None:
        for i in range(n):
            await cache.get_or_compute("regime", keys[(offset + i) % 100], value)

    await caller(100, 0)   # every key cached
    t = time.perf_counter()
    await caller(gets // 4, 0)
    one = gets // 4 / (time.perf_counter() - t)
    t = time.perf_counter()
    await asyncio.gather(*(caller(gets // 64, c) for c in range(64)))
    many = gets // 64 * 64 / (time.perf_counter() - t)
    return one, many, cache.counts["regime", "computed"]


async def cache_hits(args) -> None:
    with tempfile.TemporaryDirectory(prefix="tradeflow-bench-cache-") as tmp:
        stack = Stack(Path(tmp), services=())
        await stack.start()
        redis = Redis.from_url(stack.redis_url, max_connections=64)
        try:
            await redis.flushall()
            remote = await hit_rates(redis, CacheSettings(local_ttl=0), args.gets)
            await redis.flushall()
            near = await hit_rates(redis, CacheSettings(), args.gets)
        finally:
            await redis.aclose()
            await stack.stop()
    assert remote[2] == near[2] == 100, "every get after the first of a key was a hit"
    print("(b) cache hits (get_or_compute on 100 cached keys, a private redis-server)")
    print(f"    Redis only (LOCAL_TTL=0)    {remote[0]:10,.0f} gets/s one caller, {remote[1]:10,.0f} with 64 at once")
    print(f"    near cache (LOCAL_TTL=0.5)  {near[0]:10,.0f} gets/s one caller, {near[1]:10,.0f} with 64 at once   "
          f"(target >= {GETS_TARGET:,}: {'met' if max(near[:2]) >= GETS_TARGET else 'NOT met'})")


async def poll_rounds(js, symbols: list[str], rounds: int, latency: float, concurrency: int) -> tuple[float, int]:
    """Seconds for `rounds` polls of `symbols` (one bar each per poll), published to JetStream; bars published."""
    series: dict = {}
    for bar in synthetic(symbols, rounds, seed=concurrency):   # another seed per run: new ids, none dropped
        series.setdefault(bar.symbol, []).append(bar)
    publisher = Publisher(js, timeout=5.0, window=1024)

    async def publish(bars) -> None:
        ids = [bar_id(b) + f"-c{concurrency}" for b in bars]
        await publisher.publish([envelope_out(b, service="data", event_id=i, trace_id=ce.trace_id_for(i),
                                              causation_id=None) for i, b in zip(ids, bars)])

    poller = Poller(SimulatedFeed(series, latency=latency), publish, dict.fromkeys(symbols, "critical"),
                    concurrency=concurrency)
    t = time.perf_counter()
    published = sum([await poller.poll(symbols) for _ in range(rounds)])
    return time.perf_counter() - t, published


async def polling(args) -> None:
    symbols = [f"SYM{i}" for i in range(args.symbols)]
    with tempfile.TemporaryDirectory(prefix="tradeflow-bench-poll-") as tmp:
        stack = Stack(Path(tmp), services=())
        await stack.start()
        nc = await nats.connect(stack.nats_url)
        try:
            await ensure_streams(nc.jsm(), RuntimeSettings())
            js = nc.jetstream()
            sequential, n_seq = await poll_rounds(js, symbols, args.rounds, args.latency, 1)
            concurrent, n_con = await poll_rounds(js, symbols, args.rounds, args.latency, 32)
        finally:
            await nc.close()
            await stack.stop()
    assert n_seq == n_con == args.rounds * args.symbols, "every poll published one bar per symbol"
    speedup = sequential / concurrent
    print(f"(c) data polling: {args.symbols} symbols, provider latency {args.latency * 1000:.0f} ms, "
          f"{args.rounds} polls, each publishing its bars to JetStream")
    print(f"    one symbol after another    {sequential / args.rounds * 1000:7.1f} ms a poll")
    print(f"    every symbol at once        {concurrent / args.rounds * 1000:7.1f} ms a poll   {speedup:.2f}x  "
          f"(target >= {POLL_TARGET:g}x for 5 symbols at 100 ms: {'met' if speedup >= POLL_TARGET else 'NOT met'})")


async def strategy_backlog(agent, items, batch: int = 256) -> tuple[float, list[float], int]:
    """Seconds to handle `items` batch by batch, the loop lags sampled meanwhile, and the signals made."""
    lags: list[float] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_lag(lags, stop))
    await asyncio.sleep(0.01)
    signals = 0
    t = time.perf_counter()
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        await agent.prepare(part)
        for position, inc in enumerate(part, 1):
            if not position % 32:    # as the worker does
                await asyncio.sleep(0)
            signals += len(agent.handle(inc, datetime.now(timezone.utc)))
    elapsed = time.perf_counter() - t
    stop.set()
    await sampler
    return elapsed, lags, signals


async def strategy_offload(args) -> None:
    items = [incoming(b) for b in synthetic([f"SYM{i}" for i in range(5)], args.bars // 5, seed=9)]
    inline = build_strategy({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_OFFLOAD": "off"})
    seconds_in, lags_in, signals_in = await strategy_backlog(inline, items)
    pool = ComputePool(PoolSettings(), Metrics("bench"))
    offloaded = build_strategy({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_OFFLOAD": "on"})
    offloaded.pool = pool
    await offloaded.prepare(items[:4 * pool.settings.workers])   # start the workers and their imports, untimed
    offloaded = build_strategy({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_OFFLOAD": "on"})
    offloaded.pool = pool
    try:
        seconds_off, lags_off, signals_off = await strategy_backlog(offloaded, items)
    finally:
        await pool.close()
    assert signals_in == signals_off and inline.windows == offloaded.windows, "the pool computes what the process does"
    print(f"(d) strategy backlog: {len(items):,} bars of 5 symbols, macd_cross, batches of 256 "
          f"({pool.settings.workers} worker processes)")
    for label, seconds, lags in (("features in the process", seconds_in, lags_in),
                                 ("features in the pool", seconds_off, lags_off)):
        print(f"    {label:<27} {len(items) / seconds:9,.0f} bars/s   loop lag p95 {p95_ms(lags):7.3f} ms, "
              f"max {max(lags, default=0) * 1000:7.3f} ms")
    print(f"    speed-up {seconds_in / seconds_off:.2f}x, same {signals_in} signals")


async def main(args) -> None:
    await offloop(args)
    await cache_hits(args)
    await polling(args)
    await strategy_offload(args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=500)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--gets", type=int, default=20_000)
    parser.add_argument("--symbols", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the provider takes to answer")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--bars", type=int, default=10_000, help="strategy backlog, bars over 5 symbols")
    parsed = parser.parse_args()
    if min(parsed.features, parsed.size, parsed.gets, parsed.symbols, parsed.rounds) < 1 or parsed.bars < 5:
        parser.error("--features, --size, --gets, --symbols and --rounds must be at least 1, --bars at least 5")
    if not 0 <= parsed.latency <= 10:
        parser.error("--latency must be from 0 to 10 seconds")
    asyncio.run(main(parsed))
