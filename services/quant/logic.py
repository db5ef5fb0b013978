"""Quant validation: strength threshold, volatility regime, duplicate-side suppression and a cool-down. Pure.

A signal passes if it is strong enough, its volatility regime is not blocked, it is not on the
same side as the symbol's last accepted signal (that one already set the direction), and it comes
at least `cooldown_seconds` of bar time after it. Every rejection names the rule that fired.

The regime is low below `regime_low`, high from `regime_high` up, normal between, from the
signal's `volatility` feature (annualised rolling volatility, which every tradeflow strategy
attaches). A signal without one (typed by hand) is judged by the symbol's last regime, if the
service still has it cached, else its regime is `unknown`.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, get_args

import msgspec

from contracts.events import Regime, SignalGenerated, SignalRejected, SignalValidated

Volatility = Annotated[float, msgspec.Meta(gt=0, le=100)]


class QuantParams(msgspec.Struct, frozen=True, kw_only=True):
    """Minimum strength in [0, 1]; regime bounds and the regimes refused; duplicates; cool-down in bar time."""

    min_strength: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    regime_low: Volatility = 0.15      # annualised volatility below this: low
    regime_high: Volatility = 0.45     # at or above this: high
    block_regimes: list[Regime] = []   # e.g. ["high"] or ["high", "unknown"]
    suppress_duplicates: bool = True
    cooldown_seconds: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        if self.regime_low >= self.regime_high:
            raise ValueError(f"regime_low ({self.regime_low}) must be below regime_high ({self.regime_high})")


REGIMES: tuple[str, ...] = get_args(Regime)


def regime_of(volatility: float, params: QuantParams) -> Regime:
    """low / normal / high for an annualised volatility."""
    if volatility < params.regime_low:
        return "low"
    return "high" if volatility >= params.regime_high else "normal"


def measure(signal: SignalGenerated, params: QuantParams,
            cached_regime: Regime | None = None) -> tuple[float | None, Regime]:
    """(the signal's volatility or None, its regime): measured if it carries a usable volatility."""
    volatility = signal.features.get("volatility")
    if volatility is None or not (volatility >= 0 and math.isfinite(volatility)):
        return None, cached_regime or "unknown"   # a negative or non-finite volatility says nothing
    return volatility, regime_of(volatility, params)


class Accepted(msgspec.Struct, frozen=True):
    """The last signal of a symbol that passed: its bar time and side."""

    ts: datetime
    side: str


def validate(signal: SignalGenerated, params: QuantParams, last: Accepted | None = None,
             cached_regime: Regime | None = None) -> tuple[Accepted | None, SignalValidated | SignalRejected]:
    """(the symbol's last accepted signal afterwards, the validated signal or a rejection naming its rule).

    `cached_regime` is the symbol's last known regime, used only when the signal carries no volatility.
    """

    def reject(rule: str, reason: str) -> tuple[Accepted | None, SignalRejected]:
        return last, SignalRejected(symbol=signal.symbol, ts=signal.ts, stage="quant", rule=rule, side=signal.side,
                                    strategy=signal.strategy, reason=reason)

    if signal.strength < params.min_strength:
        return reject("min_strength",
                      f"strength {signal.strength:.4f} is below the minimum {params.min_strength:.4f}")
    volatility, regime = measure(signal, params, cached_regime)
    if regime in params.block_regimes:
        measured = f"volatility {volatility:.4f}" if volatility is not None else "no volatility on the signal"
        return reject("regime", f"{regime} volatility regime ({measured}; low < {params.regime_low:g} <= normal "
                                f"< {params.regime_high:g} <= high) is blocked")
    if last is not None and params.suppress_duplicates and signal.side == last.side:
        return reject("duplicate_side", f"already {last.side} since {last.ts.isoformat()}")
    if last is not None and (signal.ts - last.ts).total_seconds() < params.cooldown_seconds:
        return reject("cooldown", f"{(signal.ts - last.ts).total_seconds():g}s since the last accepted signal, "
                                  f"cool-down is {params.cooldown_seconds:g}s")
    return Accepted(signal.ts, signal.side), SignalValidated(
        symbol=signal.symbol, ts=signal.ts, side=signal.side, strength=signal.strength, price=signal.price,
        strategy=signal.strategy, volatility=volatility, regime=regime)
