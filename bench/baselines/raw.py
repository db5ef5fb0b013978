"""The raw ceiling: tradeflow's hops written by hand on nats-py, with none of its features.

One process per hop, on the same streams, subjects and consumer filters as tradeflow's services:
pull consumer, fetch in batches, decode with one msgspec decoder, handle, publish the outputs
concurrently and await their PubAcks, then ack the inputs (the same at-least-once contract, so
the comparison is of features, not of guarantees). No dedup registry, no DLQ, no recorder, no
metrics, no envelope headers beyond Nats-Msg-Id. The strategy hop runs tradeflow's own pure SMA
crossover, so both pipelines carry the same signals; the later hops pass them on (the hops' logic
is bench/hops.py, shared with the framework peers in bench/peers/).

    python bench/baselines/raw.py HOP NATS_URL      (HOP: strategy, quant, risk, execution, audit)
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: the hops' logic, shared with the peers

from hops import FILTERS, Hop  # noqa: E402

BATCH = 256


async def main(name: str, url: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    nc = await nats.connect(url, name=f"raw-{name}")
    js = nc.jetstream()
    durable = f"raw-{name}"
    await js.add_consumer("PIPELINE", ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                                                     filter_subjects=FILTERS[name], max_ack_pending=4096,
                                                     ack_wait=30))
    sub = await js.pull_subscribe_bind(durable=durable, stream="PIPELINE")
    hop = Hop(name)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(BATCH, timeout=0.5)
        except (NatsTimeout, asyncio.TimeoutError):
            continue
        outputs = [out for m in msgs for out in hop.handle(m.subject, m.data, m.metadata.sequence.stream)]
        acks = [await js.publish_async(subject, body, headers={"Nats-Msg-Id": out_id})
                for subject, out_id, body in outputs]
        await asyncio.wait_for(asyncio.gather(*acks), 10)
        for m in msgs:
            await m.ack()
    await sub.unsubscribe()
    await nc.flush()   # the last acks out; drain() would wait on the pull subscription's inbox for nothing
    await nc.close()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
    else:
        uvloop.run(main(sys.argv[1], sys.argv[2]))
