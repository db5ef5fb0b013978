"""Audit service wiring: fills and bars in, the portfolio out on GET /v1/portfolio."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.events import BarReceived
from contracts.subjects import DATA_READY, EXECUTED_READY
from services.audit.logic import new_portfolio, on_bar, on_fill, summary
from services.runtime.settings import load


class AuditSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_AUDIT_CASH: the cash the portfolio starts with."""

    cash: Annotated[float, msgspec.Meta(gt=0)] = 100_000.0


class AuditAgent:
    """Folds fills into the portfolio and marks it to every bar."""

    name = "audit"
    consumes = (f"{DATA_READY}.>", f"{EXECUTED_READY}.>")
    stateful = True

    def __init__(self, settings: AuditSettings) -> None:
        self.portfolio = new_portfolio(settings.cash)
        self.last_event: str | None = None

    def handle(self, incoming: Incoming, now: datetime) -> list:
        event = incoming.event
        if isinstance(event, BarReceived):
            self.portfolio = on_bar(self.portfolio, event)
        else:
            self.portfolio = on_fill(self.portfolio, event)
        self.last_event = incoming.id
        return []

    def snapshot(self) -> Any:
        return self.portfolio, self.last_event

    def restore(self, snapshot: Any) -> None:
        self.portfolio, self.last_event = snapshot

    def routes(self) -> list[web.RouteDef]:
        async def portfolio(_: web.Request) -> web.Response:
            return web.json_response(summary(self.portfolio))

        return [web.get("/v1/portfolio", portfolio)]


def build(environ=None) -> AuditAgent:
    """The audit agent from TRADEFLOW_AUDIT_*."""
    return AuditAgent(load(AuditSettings, "TRADEFLOW_AUDIT_", environ))
