"""Risk service wiring: validated_ready.<SYM> -> approved_ready.<SYM> or rejected.risk.<SYM>.

It also consumes executed_ready.> so its book follows the fills, and data_ready.> to mark
it to market (equity, the day's loss); on start the book is rebuilt from that history
(and its own past decisions) before anything new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.envelope import derive_id
from contracts.events import BarReceived, Event, OrderFilled, SignalValidated
from contracts.subjects import DATA_READY, EXECUTED_READY, VALIDATED_READY
from services.risk.logic import (Book, RiskParams, committed_equity, equity, new_book, on_bar, on_fill, on_signal,
                                 unrealized)
from services.runtime.agent import Agent, Options
from services.runtime.settings import load


class RiskAgent(Agent):
    """Sizes and limits orders against the book."""

    name = "risk"
    consumes = (f"{VALIDATED_READY}.>", f"{EXECUTED_READY}.>", f"{DATA_READY}.>")
    options = Options(stateful=True)

    def __init__(self, params: RiskParams) -> None:
        self.params = params
        self.book = new_book(params)

    def handle(self, incoming: Incoming, now: datetime) -> list[Event]:
        event = incoming.event
        if isinstance(event, BarReceived):
            self.book = on_bar(self.book, event, self.params)
            return []
        if isinstance(event, OrderFilled):
            self.book = on_fill(self.book, event)
            return []
        signal = cast(SignalValidated, event)   # the third stage risk consumes
        self.book, decision = on_signal(self.book, signal, order_id(incoming.id), self.params)
        return [decision]

    def snapshot(self) -> Any:
        return self.book

    def restore(self, snapshot: Any) -> None:
        self.book = snapshot

    def routes(self) -> list[web.RouteDef]:
        """GET /v1/book: the committed positions, the filled portfolio, its equity and the day's loss."""

        async def book(_: web.Request) -> web.Response:
            return web.json_response(book_view(self.book))

        return [web.get("/v1/book", book)]


def order_id(signal_id: str) -> str:
    """An order's id: one per validated signal, derived from the signal's event id (the same on every
    delivery, replay and simulation of it), whatever ids the runtime gives events."""
    return derive_id("order", signal_id, 0)


def book_view(book: Book) -> dict:
    """The book as JSON: its fields (of the price history, each symbol's latest price and its time), the
    committed equity and the day's loss at the latest prices, and the filled portfolio's equity and
    unrealised PnL."""
    committed = committed_equity(book)
    fields = msgspec.to_builtins(book)
    fields["prices"] = {s: {"price": h[-1][1], "at": h[-1][0].isoformat()} for s, h in book.prices.items() if h}
    return {**fields, "committed_equity": round(committed, 6),
            "day_loss": round(book.day_start_equity - committed, 6),
            "equity": round(equity(book), 6), "unrealized_pnl": round(unrealized(book), 6)}


def build(environ=None) -> RiskAgent:
    """The risk agent from TRADEFLOW_RISK_*."""
    return RiskAgent(load(RiskParams, "TRADEFLOW_RISK_", environ))
