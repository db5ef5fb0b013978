"""Risk service wiring: validated_ready.<SYM> -> approved_ready.<SYM> or rejected.risk.<SYM>.

It also consumes executed_ready.> so its book follows the fills; on start the
book is rebuilt from that history (and its own past decisions) before anything new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.envelope import derive_id
from contracts.events import Event, OrderFilled
from contracts.subjects import EXECUTED_READY, VALIDATED_READY
from services.risk.logic import Book, RiskParams, on_fill, on_signal
from services.runtime.settings import load


class RiskAgent:
    """Sizes and limits orders against the book."""

    name = "risk"
    consumes = (f"{VALIDATED_READY}.>", f"{EXECUTED_READY}.>")
    stateful = True

    def __init__(self, params: RiskParams) -> None:
        self.params = params
        self.book = Book()

    def handle(self, incoming: Incoming, now: datetime) -> list[Event]:
        event = incoming.event
        if isinstance(event, OrderFilled):
            self.book = on_fill(self.book, event)
            return []
        # the order id is the id the runtime gives this output (index 0)
        self.book, decision = on_signal(self.book, event, derive_id(self.name, incoming.id, 0), self.params)
        return [decision]

    def snapshot(self) -> Any:
        return self.book

    def restore(self, snapshot: Any) -> None:
        self.book = snapshot

    def routes(self) -> list[web.RouteDef]:
        """GET /v1/book: per symbol, the position approved orders add up to and the position filled."""

        async def book(_: web.Request) -> web.Response:
            return web.json_response(msgspec.to_builtins(self.book))

        return [web.get("/v1/book", book)]


def build(environ=None) -> RiskAgent:
    """The risk agent from TRADEFLOW_RISK_*."""
    return RiskAgent(load(RiskParams, "TRADEFLOW_RISK_", environ))
