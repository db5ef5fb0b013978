"""Execution service wiring: approved_ready.<SYM> (and the bars to fill at) -> executed_ready.<SYM>."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts.codec import Incoming
from contracts.events import BarReceived, OrderFilled
from contracts.subjects import APPROVED_READY, DATA_READY
from services.execution.logic import BrokerParams, new_broker, on_bar, on_order
from services.runtime.settings import load


class ExecutionAgent:
    """The paper broker; its account (orders seen, holdings, waiting orders) is rebuilt from history on start."""

    name = "execution"
    consumes = (f"{APPROVED_READY}.>", f"{DATA_READY}.>")
    stateful = True

    def __init__(self, params: BrokerParams) -> None:
        self.params = params
        self.broker = new_broker(params)

    def handle(self, incoming: Incoming, now: datetime) -> list[OrderFilled]:
        event = incoming.event
        step = on_bar if isinstance(event, BarReceived) else on_order
        self.broker, fills = step(self.broker, event, self.params)
        return fills

    def snapshot(self) -> Any:
        return self.broker

    def restore(self, snapshot: Any) -> None:
        self.broker = snapshot


def build(environ=None) -> ExecutionAgent:
    """The execution agent from TRADEFLOW_EXECUTION_*."""
    return ExecutionAgent(load(BrokerParams, "TRADEFLOW_EXECUTION_", environ))
