"""Quant service wiring: signals_ready.<SYM> -> validated_ready.<SYM> or rejected.quant.<SYM>."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts.codec import Incoming
from contracts.events import Event
from contracts.subjects import SIGNALS_READY
from services.quant.logic import QuantParams, validate
from services.runtime.settings import load


class QuantAgent:
    """Stateless: every signal is judged on its own."""

    name = "quant"
    consumes = (f"{SIGNALS_READY}.>",)
    stateful = False

    def __init__(self, params: QuantParams) -> None:
        self.params = params

    def handle(self, incoming: Incoming, now: datetime) -> list[Event]:
        return [validate(incoming.event, self.params)]

    def snapshot(self) -> Any:
        return None

    def restore(self, snapshot: Any) -> None:
        pass


def build(environ=None) -> QuantAgent:
    """The quant agent from TRADEFLOW_QUANT_MIN_STRENGTH."""
    return QuantAgent(load(QuantParams, "TRADEFLOW_QUANT_", environ))
