"""Execution service wiring: approved_ready.<SYM> -> executed_ready.<SYM>, each order filled once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts.codec import Incoming
from contracts.events import OrderFilled
from contracts.subjects import APPROVED_READY
from services.execution.logic import BrokerParams, fill_once
from services.runtime.settings import load


class ExecutionAgent:
    """The paper broker; the set of filled order ids is rebuilt from history on start."""

    name = "execution"
    consumes = (f"{APPROVED_READY}.>",)
    stateful = True

    def __init__(self, params: BrokerParams) -> None:
        self.params = params
        self.filled: frozenset[str] = frozenset()

    def handle(self, incoming: Incoming, now: datetime) -> list[OrderFilled]:
        self.filled, fills = fill_once(self.filled, incoming.event, self.params)
        return fills

    def snapshot(self) -> Any:
        return self.filled

    def restore(self, snapshot: Any) -> None:
        self.filled = snapshot


def build(environ=None) -> ExecutionAgent:
    """The execution agent from TRADEFLOW_EXECUTION_*."""
    return ExecutionAgent(load(BrokerParams, "TRADEFLOW_EXECUTION_", environ))
