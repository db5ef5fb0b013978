"""Quant service wiring: signals_ready.<SYM> -> validated_ready.<SYM> or rejected.quant.<SYM>."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts.codec import Incoming
from contracts.events import Event
from contracts.subjects import SIGNALS_READY
from services.quant.logic import Accepted, QuantParams, validate
from services.runtime.settings import load


class QuantAgent:
    """Judges each signal, remembering each symbol's last accepted one."""

    name = "quant"
    consumes = (f"{SIGNALS_READY}.>",)
    stateful = True

    def __init__(self, params: QuantParams) -> None:
        self.params = params
        self.accepted: dict[str, Accepted] = {}

    def handle(self, incoming: Incoming, now: datetime) -> list[Event]:
        signal = incoming.event
        last, decision = validate(signal, self.params, self.accepted.get(signal.symbol))
        if last is not None:
            self.accepted[signal.symbol] = last
        return [decision]

    def snapshot(self) -> Any:
        return dict(self.accepted)

    def restore(self, snapshot: Any) -> None:
        self.accepted = snapshot


def build(environ=None) -> QuantAgent:
    """The quant agent from TRADEFLOW_QUANT_MIN_STRENGTH, _SUPPRESS_DUPLICATES, _COOLDOWN_SECONDS."""
    return QuantAgent(load(QuantParams, "TRADEFLOW_QUANT_", environ))
