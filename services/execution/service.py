"""Execution service wiring: approved_ready.<SYM> (and the bars to fill at) -> executed_ready.<SYM>.

Every fill is written to the fill ledger (TRADEFLOW_EXECUTION_LEDGER: a path or sqlite:///…, by
default <data dir>/execution/fills.sqlite, or postgresql://… for a ledger several hosts share) before
it is published. Before a batch is handled, the ledger is asked about every order the batch could
fill; an order it holds gets its recorded fill again, never a second one. The ledger's answer to the
write is the last word: where another execution process recorded an order's fill first, the batch is
rolled back and handled again with that fill (FillConflict), so what is published is the fill that
stands, with its event id and body, whichever process made it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
from aiohttp import web
from prometheus_client import Counter

from contracts.codec import Incoming
from contracts.events import BarReceived, OrderApproved, OrderFilled, Symbol
from contracts.subjects import APPROVED_READY, DATA_READY
from services.execution.ledger import SETTING, FillConflict, FillLedger, Location, open_ledger, parse_location
from services.execution.logic import BrokerParams, new_broker, on_bar, on_order
from services.runtime.agent import Agent, AgentContext, Options, Output
from services.runtime.settings import load

log = logging.getLogger(__name__)


class LedgerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_EXECUTION_LEDGER: the fill ledger's path or URL (default: a file in the service's data directory)."""

    ledger: str | None = None


class FillsQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """GET /v1/fills query: how many, of which symbol."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    symbol: Symbol | None = None


class ExecutionAgent(Agent):
    """The paper broker; its account (orders seen, holdings, waiting orders) is rebuilt from history on start."""

    name = "execution"
    consumes = (f"{APPROVED_READY}.>", f"{DATA_READY}.>")
    options = Options(stateful=True, wait_for_dedup=True)   # a fill is acked only once its input is marked done

    def __init__(self, params: BrokerParams, ledger: str | os.PathLike[str] | Location | None = None) -> None:
        self.params = params
        self.broker = new_broker(params)
        # parsed now: a malformed TRADEFLOW_EXECUTION_LEDGER stops the service before it connects to anything
        self.ledger_location = ledger if ledger is None or isinstance(ledger, Location) \
            else parse_location(ledger, SETTING)
        self.ledger: FillLedger | None = None
        self.recorded: dict[str, OrderFilled] = {}   # this batch's orders the ledger already holds
        self.queued: list[OrderFilled] = []          # this batch's fills, to record before publishing
        self.waiting: dict[str, tuple[str, str]] = {}  # a waiting order's id -> (its trace, its event id)
        self.filled_elsewhere: Counter | None = None   # made by open(), in the service's metrics

    def handle(self, incoming: Incoming, now: datetime) -> list[Output]:
        """Each fill keyed by its order: it is its order's, made once (the ledger), so its id comes from the
        order whichever input made or re-published it (the order itself, the bar after it, or a redelivery of
        either). A fill made on a later bar belongs to its order's trace, caused by the order, not the bar."""
        event = incoming.event
        if isinstance(event, BarReceived):
            self.broker, fills = on_bar(self.broker, event, self.params, self.recorded)
        else:
            self.broker, fills = on_order(self.broker, cast(OrderApproved, event), self.params, self.recorded)
        self.queued += fills
        if isinstance(event, OrderApproved) and not fills:
            self.waiting[event.order_id] = (incoming.envelope.trace_id, incoming.id)
        return [Output(fill, key=f"fill:{fill.order_id}", cause=self.waiting.pop(fill.order_id, None))
                for fill in fills]

    async def open(self, context: AgentContext) -> None:
        self.ledger = await open_ledger(self.ledger_location or context.data_dir / "fills.sqlite")
        if context.metrics is not None:
            self.filled_elsewhere = Counter(
                "tradeflow_fills_recorded_elsewhere", "Orders whose fill another execution process had recorded "
                "first (two alive on one ledger); the fill that stands was published", ["service"],
                registry=context.metrics.registry).labels(self.name)

    async def prepare(self, inputs: Sequence[Incoming]) -> None:
        """Look up every order this batch could fill: its new orders and those waiting for a bar."""
        self.queued = []
        ids = [inc.event.order_id for inc in inputs if isinstance(inc.event, OrderApproved)]
        bar_symbols = {inc.event.symbol for inc in inputs if isinstance(inc.event, BarReceived)}
        ids += [o.order_id for s in bar_symbols for o in self.broker.pending.get(s, ())]
        self.recorded = await self._ledger().lookup(ids) if ids else {}

    async def record(self) -> None:
        """Write this batch's fills to the ledger (insert-or-ignore by order id) before they are published;
        FillConflict if the fill that stands for one of its orders is another process's, not this batch's
        (the runtime rolls the batch back and handles it again: prepare() then finds that fill)."""
        fills, self.queued = self.queued, []
        standing, inserted = await self._ledger().record(fills)
        # neither known to the ledger before this batch nor inserted by it: another process filled it since
        elsewhere = [f.order_id for f in fills if f.order_id not in inserted and f.order_id not in self.recorded]
        if elsewhere:
            log.warning("another execution process recorded fills of these orders first: is a second one alive on "
                        "this ledger?", extra={"orders": elsewhere[:10], "count": len(elsewhere)})
            if self.filled_elsewhere is not None:
                self.filled_elsewhere.inc(len(elsewhere))
        others = [fill.order_id for fill in fills if standing[fill.order_id] != fill]
        if others:
            raise FillConflict(f"the fill ledger holds another process's fill for {len(others)} order(s) of this "
                               f"batch ({', '.join(others[:3])}): handling it again with them")

    def _ledger(self) -> FillLedger:
        assert self.ledger is not None, "open() opens the ledger"
        return self.ledger

    async def close(self) -> None:
        if self.ledger is not None:
            await self.ledger.close()

    def snapshot(self) -> Any:
        return self.broker, dict(self.waiting)

    def restore(self, snapshot: Any) -> None:
        self.broker, self.waiting = snapshot
        self.queued = []

    def routes(self) -> list[web.RouteDef]:
        """GET /v1/fills?limit=N&symbol=S: the last fills in the ledger, newest first."""

        async def fills(request: web.Request) -> web.Response:
            try:
                query = msgspec.convert(dict(request.query), FillsQuery, strict=False)
            except msgspec.ValidationError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            if self.ledger is None:
                return web.json_response({"error": "ledger not open yet"}, status=503)
            rows = await self.ledger.recent(query.limit, query.symbol)
            return web.json_response({"fills": msgspec.to_builtins(rows), "count": await self.ledger.count()})

        return [web.get("/v1/fills", fills)]


def build(environ=None) -> ExecutionAgent:
    """The execution agent from TRADEFLOW_EXECUTION_*."""
    ledger = load(LedgerSettings, "TRADEFLOW_EXECUTION_", environ)
    return ExecutionAgent(load(BrokerParams, "TRADEFLOW_EXECUTION_", environ), ledger.ledger or None)
