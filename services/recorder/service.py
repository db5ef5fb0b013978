"""The recorder service: every pipeline event, appended to the event store, acked after the commit.

It is an agent like the others, so it inherits the processing contract: a durable pull consumer
(`recorder`) on every PIPELINE subject, rejections included; each fetched batch is one SQLite
transaction (`record()`), and only then are its messages acked. It publishes nothing. A
redelivered message is a no-op (insert-or-ignore by event id), so it needs no Redis dedup and
keeps recording while Redis is down. How far behind it is shows in
`tradeflow_consumer_pending{service="recorder"}`.

Bad input (a body no stage could decode) is not an event: the stage that consumes it
dead-letters it, so the recorder only counts it and moves on rather than dead-letter it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.subjects import PIPELINE_SUBJECTS
from replay.store import SqliteEventStore, StoredEvent
from services.runtime.agent import Agent, AgentContext, Options
from services.runtime.store import store_location


class RecorderAgent(Agent):
    """Turns each fetched batch into one store transaction."""

    name = "recorder"
    consumes = tuple(PIPELINE_SUBJECTS)
    # insert-or-ignore by id already makes a redelivery a no-op (no dedup); bad input is dead-lettered by
    # the stage that consumes it; off the trading path: a transaction of many events, not one per event
    options = Options(dedup=False, dead_letters=False, linger=0.25)

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store: SqliteEventStore | None = None
        self.queued: list[StoredEvent] = []

    async def open(self, context: AgentContext) -> None:
        self.store = await SqliteEventStore.open(self.path)

    async def prepare(self, inputs: Sequence[Incoming]) -> None:
        self.queued = []

    def handle(self, incoming: Incoming, now: datetime) -> list[Any]:
        self.queued.append(StoredEvent.of(incoming, recorded_at=now))
        return []

    async def record(self) -> None:
        """Commit the batch (StoreUnavailable, a Transient, retries it in place)."""
        assert self.store is not None, "open() opens the store"
        await self.store.append(self.queued)
        self.queued = []

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def restore(self, snapshot: None) -> None:
        self.queued = []   # the batch is handled again from its start

    def routes(self) -> list[web.RouteDef]:
        """GET /v1/store: how many events the store holds, their span and per-stage counts."""

        async def stats(request: web.Request) -> web.Response:
            if self.store is None:
                return web.json_response({"error": "store not open yet"}, status=503)
            return web.json_response(msgspec.to_builtins(await self.store.stats()) | {"path": str(self.store.path)})

        return [web.get("/v1/store", stats)]


def build(environ=None) -> RecorderAgent:
    """The recorder from TRADEFLOW_STORE."""
    return RecorderAgent(store_location(environ))
