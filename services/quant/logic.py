"""Quant validation: strength threshold, duplicate-side suppression and a cool-down per symbol. Pure.

A signal passes if it is strong enough, is not on the same side as the symbol's last
accepted signal (that one already set the direction), and comes at least `cooldown_seconds`
of bar time after it. Every rejection names the rule that fired.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from contracts.events import SignalGenerated, SignalRejected, SignalValidated


class QuantParams(msgspec.Struct, frozen=True, kw_only=True):
    """Minimum strength in [0, 1]; duplicate suppression; cool-down in seconds of bar time."""

    min_strength: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    suppress_duplicates: bool = True
    cooldown_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class Accepted(msgspec.Struct, frozen=True):
    """The last signal of a symbol that passed: its bar time and side."""

    ts: datetime
    side: str


def validate(signal: SignalGenerated, params: QuantParams,
             last: Accepted | None = None) -> tuple[Accepted | None, SignalValidated | SignalRejected]:
    """(the symbol's last accepted signal afterwards, the validated signal or a rejection naming its rule)."""

    def reject(rule: str, reason: str) -> tuple[Accepted | None, SignalRejected]:
        return last, SignalRejected(symbol=signal.symbol, ts=signal.ts, stage="quant", rule=rule, side=signal.side,
                                    strategy=signal.strategy, reason=reason)

    if signal.strength < params.min_strength:
        return reject("min_strength",
                      f"strength {signal.strength:.4f} is below the minimum {params.min_strength:.4f}")
    if last is not None and params.suppress_duplicates and signal.side == last.side:
        return reject("duplicate_side", f"already {last.side} since {last.ts.isoformat()}")
    if last is not None and (signal.ts - last.ts).total_seconds() < params.cooldown_seconds:
        return reject("cooldown", f"{(signal.ts - last.ts).total_seconds():g}s since the last accepted signal, "
                                  f"cool-down is {params.cooldown_seconds:g}s")
    return Accepted(signal.ts, signal.side), SignalValidated(
        symbol=signal.symbol, ts=signal.ts, side=signal.side, strength=signal.strength, price=signal.price,
        strategy=signal.strategy)
