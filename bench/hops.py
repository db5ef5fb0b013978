"""The benchmark hops' logic, shared by the raw ceiling (bench/baselines/raw.py) and the framework
peers (bench/peers/): each hop's consumer filters and what it makes of one message, so every
pipeline built on them carries the same events whatever client or framework moves them.

The strategy hop runs tradeflow's own pure SMA crossover; quant passes signals on, risk approves
every validated signal as an order of one, execution fills every order; bars at risk, execution and
audit, and fills at risk and audit, produce nothing. Output ids are `{hop}-{input stream sequence}`,
so a redelivered input republishes under the same Nats-Msg-Id and the stream's dedup drops it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.events import BarReceived, OrderApproved, OrderFilled, SignalGenerated  # noqa: E402
from contracts.subjects import stage_of  # noqa: E402
from services.strategy.logic import SmaCrossParams, Window, sma_cross  # noqa: E402

FILTERS = {
    "strategy": ["data_ready.>"],
    "quant": ["signals_ready.>"],
    "risk": ["validated_ready.>", "executed_ready.>", "data_ready.>"],
    "execution": ["approved_ready.>", "data_ready.>"],
    "audit": ["executed_ready.>", "data_ready.>"],
}
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
        stage = stage_of(subject)
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
