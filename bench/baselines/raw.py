"""The raw ceiling: tradeflow's hops written by hand on nats-py, with none of its features.

One process per hop, on the same streams, subjects and consumer filters as tradeflow's services:
pull consumer, fetch in batches, decode with one msgspec decoder, handle, publish the outputs
concurrently and await their PubAcks, then ack the inputs (the same at-least-once contract, so
the comparison is of features, not of guarantees). No dedup registry, no DLQ, no recorder, no
metrics, no envelope headers beyond Nats-Msg-Id. The strategy hop runs tradeflow's own pure SMA
crossover, so both pipelines carry the same signals; the later hops pass them on.

    python bench/baselines/raw.py HOP NATS_URL      (HOP: strategy, quant, risk, execution, audit)
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import msgspec
import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from contracts.events import BarReceived, OrderApproved, OrderFilled, SignalGenerated  # noqa: E402
from services.strategy.logic import SmaCrossParams, Window, sma_cross  # noqa: E402

FILTERS = {
    "strategy": ["data_ready.>"],
    "quant": ["signals_ready.>"],
    "risk": ["validated_ready.>", "executed_ready.>", "data_ready.>"],
    "execution": ["approved_ready.>", "data_ready.>"],
    "audit": ["executed_ready.>", "data_ready.>"],
}
BATCH = 256
_encode = msgspec.json.Encoder().encode
_bar = msgspec.json.Decoder(BarReceived).decode
_signal = msgspec.json.Decoder(SignalGenerated).decode
_order = msgspec.json.Decoder(OrderApproved).decode


class Hop:
    """One hop's logic: a message in, (subject, id, body) out."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.windows: dict[str, Window] = {}
        self.params = SmaCrossParams()

    def handle(self, subject: str, data: bytes, seq: int) -> list[tuple[str, str, bytes]]:
        stage = subject.partition(".")[0]
        out_id = f"{self.name}-{seq}"
        if self.name == "strategy":
            bar = _bar(data)
            self.windows[bar.symbol], signals = sma_cross(self.windows.get(bar.symbol, Window()), bar, self.params)
            return [(f"signals_ready.{s.symbol}", out_id, _encode(s)) for s in signals]
        if self.name == "quant":
            return [(f"validated_ready.{subject.partition('.')[2]}", out_id, data)]
        if self.name == "risk" and stage == "validated_ready":
            s = _signal(data)
            order = OrderApproved(symbol=s.symbol, ts=s.ts, order_id=out_id, side=s.side, quantity=1, price=s.price)
            return [(f"approved_ready.{s.symbol}", out_id, _encode(order))]
        if self.name == "execution" and stage == "approved_ready":
            o = _order(data)
            fill = OrderFilled(symbol=o.symbol, ts=o.ts, order_id=o.order_id, side=o.side, quantity=o.quantity,
                               price=o.price, commission=0.0)
            return [(f"executed_ready.{o.symbol}", out_id, _encode(fill))]
        return []   # bars at risk, execution and audit; fills at risk and audit: nothing to pass on


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
    await nc.drain()


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
    else:
        uvloop.run(main(sys.argv[1], sys.argv[2]))
