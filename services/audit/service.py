"""Audit service wiring: fills and bars in, the portfolio out on GET /v1/portfolio and the equity curve
in event time on GET /v1/equity?points=N (both as micro endpoints too: tradeflow.audit.portfolio,
tradeflow.audit.equity), every fill and closed trade in the audit trail (TRADEFLOW_AUDIT_LOG: by default
the JSON-lines file <data dir>/audit/audit.jsonl; see services.audit.trail)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.events import BarReceived, OrderFilled
from contracts.subjects import DATA_READY, EXECUTED_READY
from services.audit import trades
from services.audit.logic import Logged, Portfolio, curve_report, equity_curve, in_event_time, report
from services.audit.trail import DEFAULT_FILE, AuditTrail, locate, open_trail
from services.runtime.agent import Agent, AgentContext, Options
from services.runtime.settings import load

CURVE_POINTS = 500          # the equity curve's points, unless asked for others
MAX_CURVE_POINTS = 10_000


class AuditSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_AUDIT_CASH: the cash the portfolio starts with; TRADEFLOW_AUDIT_LOG: the audit trail (a path:
    the JSON-lines file; sqlite:///path: a SQLite table; postgresql://…: a PostgreSQL table)."""

    cash: Annotated[float, msgspec.Meta(gt=0)] = 100_000.0
    log: str | None = None


class AuditAgent(Agent):
    """Folds fills into the portfolio and marks it to every bar; reports in event time."""

    name = "audit"
    consumes = (f"{DATA_READY}.>", f"{EXECUTED_READY}.>")
    options = Options(stateful=True, linger=0.1)   # after the fill: the books may be 0.1 s behind, in larger batches

    def __init__(self, settings: AuditSettings) -> None:
        self.cash = settings.cash
        if settings.log:
            locate(settings.log)   # a malformed TRADEFLOW_AUDIT_LOG stops the service before it connects
        self.trail_location = settings.log
        # every fill and bar, append-only; the portfolio is folded from it when asked for,
        # in event time (fills order 0, bars 1), so a snapshot is just its length
        self.log: list[Logged] = []
        self.trades = trades.Trades()   # fills paired into trades in arrival order, for the audit log
        self.lines: list[dict] = []      # audit trail lines not yet written
        self.trail: AuditTrail | None = None

    def handle(self, incoming: Incoming, now: datetime) -> list:
        event = cast(BarReceived | OrderFilled, incoming.event)   # what audit consumes
        self.log.append((event.ts, 1 if isinstance(event, BarReceived) else 0, event))
        if isinstance(event, OrderFilled):
            self._log_fill(incoming, event, now)
        return []

    def _log_fill(self, incoming: Incoming, fill: OrderFilled, now: datetime) -> None:
        env = incoming.envelope
        closed_before = len(self.trades.closed)
        self.trades = trades.on_fill(self.trades, fill)
        self.lines.append({"id": env.id, "type": "fill", "trace_id": env.trace_id, "causation_id": env.causation_id,
                           "subject": env.subject, "logged_at": now.isoformat(), **msgspec.to_builtins(fill)})
        for n, trade in enumerate(self.trades.closed[closed_before:]):
            self.lines.append({"id": f"{env.id}:trade:{n}", "type": "trade", "closed_by": env.id,
                               "trace_id": env.trace_id, "logged_at": now.isoformat(), **msgspec.to_builtins(trade)})

    async def open(self, context: AgentContext) -> None:
        self.trail = await open_trail(self.trail_location or context.data_dir / DEFAULT_FILE)

    async def record(self) -> None:
        """Append this batch's lines (and any the rebuild re-derived) to the audit trail before acking."""
        if self.lines:
            assert self.trail is not None, "open() opens the audit trail"
            await self.trail.append(self.lines)
            self.lines = []

    async def close(self) -> None:
        if self.trail is not None:
            await self.trail.close()

    def snapshot(self) -> Any:
        return len(self.log), self.trades, len(self.lines)

    def restore(self, snapshot: Any) -> None:
        events, self.trades, lines = snapshot
        del self.log[events:]
        del self.lines[lines:]

    def report(self) -> Portfolio:
        """The portfolio in event time (see `in_event_time`)."""
        return in_event_time(self.cash, self.log)

    async def portfolio(self) -> dict:
        """Positions, cash, PnL and closed trades in event time (GET /v1/portfolio, tradeflow.audit.portfolio)."""
        events = list(self.log)  # a copy: the handler appends while the executor sorts
        pf = await asyncio.get_running_loop().run_in_executor(None, in_event_time, self.cash, events)
        return report(pf)

    async def equity(self, points: int = CURVE_POINTS) -> dict:
        """The equity curve in event time, at most `points` of it (GET /v1/equity, tradeflow.audit.equity)."""
        events = list(self.log)
        curve = await asyncio.get_running_loop().run_in_executor(None, equity_curve, self.cash, events)
        return curve_report(curve, points)

    def routes(self) -> list[web.RouteDef]:
        async def portfolio(_: web.Request) -> web.Response:
            return web.json_response(await self.portfolio())

        async def equity(request: web.Request) -> web.Response:
            raw = request.query.get("points", str(CURVE_POINTS))
            if not (raw.isascii() and raw.isdigit()) or not 4 <= int(raw) <= MAX_CURVE_POINTS:
                return web.json_response({"error": f"points must be a whole number from 4 to {MAX_CURVE_POINTS}"},
                                         status=400)
            return web.json_response(await self.equity(int(raw)))

        return [web.get("/v1/portfolio", portfolio), web.get("/v1/equity", equity)]

    def micro_endpoints(self) -> dict:
        return {"portfolio": self.portfolio, "equity": self.equity}


def build(environ=None) -> AuditAgent:
    """The audit agent from TRADEFLOW_AUDIT_*."""
    return AuditAgent(load(AuditSettings, "TRADEFLOW_AUDIT_", environ))
