"""Quant validation: a signal passes if it is strong enough. Pure and synchronous."""

from __future__ import annotations

from typing import Annotated

import msgspec

from contracts.events import SignalGenerated, SignalRejected, SignalValidated


class QuantParams(msgspec.Struct, frozen=True, kw_only=True):
    """Minimum signal strength in [0, 1]."""

    min_strength: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


def validate(signal: SignalGenerated, params: QuantParams) -> SignalValidated | SignalRejected:
    """The validated signal, or a rejection that says which rule fired."""
    if signal.strength < params.min_strength:
        return SignalRejected(
            symbol=signal.symbol, ts=signal.ts, stage="quant", rule="min_strength", side=signal.side,
            strategy=signal.strategy,
            reason=f"strength {signal.strength:.4f} is below the minimum {params.min_strength:.4f}",
        )
    return SignalValidated(symbol=signal.symbol, ts=signal.ts, side=signal.side, strength=signal.strength,
                           price=signal.price, strategy=signal.strategy)
