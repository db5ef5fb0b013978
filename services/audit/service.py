"""Audit service wiring: fills and bars in, the portfolio out on GET /v1/portfolio."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.events import BarReceived, Event
from contracts.subjects import DATA_READY, EXECUTED_READY
from services.audit.logic import Portfolio, in_event_time, report
from services.runtime.settings import load


class AuditSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_AUDIT_CASH: the cash the portfolio starts with."""

    cash: Annotated[float, msgspec.Meta(gt=0)] = 100_000.0


class AuditAgent:
    """Folds fills into the portfolio and marks it to every bar; reports in event time."""

    name = "audit"
    consumes = (f"{DATA_READY}.>", f"{EXECUTED_READY}.>")
    stateful = True

    def __init__(self, settings: AuditSettings) -> None:
        self.cash = settings.cash
        # every fill and bar, append-only; the portfolio is folded from it when asked for,
        # in event time (fills order 0, bars 1), so a snapshot is just its length
        self.log: list[tuple[datetime, int, Event]] = []

    def handle(self, incoming: Incoming, now: datetime) -> list:
        event = incoming.event
        self.log.append((event.ts, 1 if isinstance(event, BarReceived) else 0, event))
        return []

    def snapshot(self) -> Any:
        return len(self.log)

    def restore(self, snapshot: Any) -> None:
        del self.log[snapshot:]

    def report(self) -> Portfolio:
        """The portfolio in event time (see `in_event_time`)."""
        return in_event_time(self.cash, self.log)

    def routes(self) -> list[web.RouteDef]:
        async def portfolio(_: web.Request) -> web.Response:
            events = list(self.log)  # a copy: the handler appends while the executor sorts
            pf = await asyncio.get_running_loop().run_in_executor(None, in_event_time, self.cash, events)
            return web.json_response(report(pf))

        return [web.get("/v1/portfolio", portfolio)]


def build(environ=None) -> AuditAgent:
    """The audit agent from TRADEFLOW_AUDIT_*."""
    return AuditAgent(load(AuditSettings, "TRADEFLOW_AUDIT_", environ))
