"""What durability costs on the paths a service waits on: dedup marks under Redis' AOF fsync policies,
and PubAcks under JetStream's `sync_interval`.

Redis: six callers (one per consuming service) mark batches of 64 ids as fast as Redis takes them,
against the redis-server a deployment runs (ACL users, AOF), with `appendfsync everysec` and with
`always`; ids marked per second and each call's p50/p99.

NATS: 20,000 events of 300 bytes published to a file-stored stream of one replica, 256 PubAcks
awaited at a time, then 2,000 one at a time, with the default `sync_interval` (2 min) and with
`always`; events per second and a lone publish's p50/p99.

    .venv/bin/python bench/durability_bench.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nats  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from services.ops.stack import Stack  # noqa: E402
from services.ops.supervisor import Proc, Supervisor, free_port, nats_server_binary, wait_port  # noqa: E402
from services.registry import CONSUMERS  # noqa: E402
from services.runtime.dedup import DedupRegistry  # noqa: E402
from services.runtime.metrics import quantile  # noqa: E402

BATCH = 64


async def marks(stack: Stack, service: str, until: float, took: list[float]) -> int:
    redis = Redis.from_url(stack.redis_url_for(service))
    registry = DedupRegistry(redis, service, 86_400)
    done = 0
    try:
        while time.monotonic() < until:
            ids = [f"{service}-{done + i}" for i in range(BATCH)]
            started = time.perf_counter()
            await registry.mark(ids)
            took.append(time.perf_counter() - started)
            done += BATCH
    finally:
        await redis.aclose()
    return done


async def one(policy: str, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as home:
        stack = Stack(Path(home), services=(), redis_appendfsync=policy)
        await stack.start_redis()
        try:
            took: list[float] = []
            until = time.monotonic() + seconds
            counts = await asyncio.gather(*(marks(stack, name, until, took) for name in CONSUMERS))
        finally:
            await stack.stop()
    return {"policy": policy, "ids_per_s": sum(counts) / seconds, "calls": len(took),
            "p50_ms": 1000 * quantile(sorted(took), 0.5), "p99_ms": 1000 * quantile(sorted(took), 0.99)}


async def pubacks(sync: str | None, events: int = 20_000, window: int = 256, lone: int = 2_000) -> dict:
    """Publish to a one-replica file stream on a nats-server of its own with `sync_interval: sync`."""
    with tempfile.TemporaryDirectory() as home:
        conf = Path(home) / "nats.conf"
        conf.write_text(f"jetstream {{ store_dir: {home}/js" + (f", sync_interval: {sync}" if sync else "") + " }\n")
        port, supervisor = free_port(), Supervisor()
        proc = await supervisor.start(Proc("nats-server", [nats_server_binary(), "-c", str(conf), "-a", "127.0.0.1",
                                                           "-p", str(port)], {}, Path(home) / "nats.log"))
        try:
            await wait_port("127.0.0.1", port, 20, proc.process)
            nc = await nats.connect(f"nats://127.0.0.1:{port}")
            js = nc.jetstream()
            await js.add_stream(name="BENCH", subjects=["bench.>"], storage="file")
            body = b"x" * 300
            started = time.perf_counter()
            for first in range(0, events, window):
                await asyncio.gather(*(js.publish(f"bench.{i % 5}", body) for i in range(first, first + window)))
            rate = events / (time.perf_counter() - started)
            took = []
            for i in range(lone):
                t = time.perf_counter()
                await js.publish(f"bench.{i % 5}", body)
                took.append(time.perf_counter() - t)
            await nc.close()
        finally:
            await supervisor.stop_all()
    took.sort()
    return {"sync": sync or "2m (default)", "rate": rate, "p50_ms": 1000 * quantile(took, 0.5),
            "p99_ms": 1000 * quantile(took, 0.99)}


async def main(seconds: float) -> None:
    rows = [await one(policy, seconds) for policy in ("everysec", "always", "everysec", "always")]
    print("| appendfsync | ids marked/s | mark calls | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['policy']} | {r['ids_per_s']:,.0f} | {r['calls']:,} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    rows = [await pubacks(sync) for sync in (None, "always", None, "always")]
    print("\n| sync_interval | events/s (256 in flight) | lone publish p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sync']} | {r['rate']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(main(parser.parse_args().seconds))
