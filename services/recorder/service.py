"""The recorder service: every pipeline event, appended to the event store, acked after the commit.

It is an agent like the others, so it inherits the processing contract: a durable pull consumer
(`recorder`) on every PIPELINE subject, rejections included; each fetched batch is one SQLite
transaction (`record()`), and only then are its messages acked. It publishes nothing. A
redelivered message is a no-op (insert-or-ignore by event id), so it needs no Redis dedup and
keeps recording while Redis is down. How far behind it is shows in
`tradeflow_consumer_pending{service="recorder"}`.

Bad input (a body no stage could decode) is not an event: the stage that consumes it
dead-letters it, so the recorder only counts it and moves on rather than dead-letter it twice.

One recorder writes at a time: on start it takes the store's writer lock (`acquire_writer`). A
second one (a replacement started beside one still alive) says once that another recorder holds
the store and waits, unready (`store_writer` false in /readyz and /v1/health), consuming nothing,
until the first stops or dies. It takes up what the first left unacked before anything newer
(`Options.in_order`), so the store fills in stream order and its highest sequence is a watermark
the state rebuild can trust (services/runtime/rebuild.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.errors import Fatal
from contracts.subjects import PIPELINE_SUBJECTS
from replay.store import EventStore, Location, StoreBusy, StoredEvent
from services.runtime.agent import Agent, AgentContext, Options
from services.runtime.store import open_event_store, store_location

log = logging.getLogger(__name__)
FIRST_TRY = 0.5   # seconds the first attempt at the writer lock waits before saying another recorder holds it


class RecorderAgent(Agent):
    """Turns each fetched batch into one store transaction."""

    name = "recorder"
    consumes = tuple(PIPELINE_SUBJECTS)
    # insert-or-ignore by id already makes a redelivery a no-op (no dedup); bad input is dead-lettered by
    # the stage that consumes it; off the trading path: a transaction of many events, not one per event
    # in_order: the store's highest sequence is a watermark (see the module's doc)
    options = Options(dedup=False, dead_letters=False, linger=0.25, in_order=True)

    def __init__(self, location: Location) -> None:
        self.location = location
        self.store: EventStore | None = None
        self.queued: list[StoredEvent] = []
        self.writer: Literal["opening", "waiting", "holding"] = "opening"

    async def open(self, context: AgentContext) -> None:
        """Open the store and become its one writer, waiting for as long as another recorder holds it."""
        store = await open_event_store(self.location)
        try:
            await self._become_writer(store)
        except BaseException:
            await store.close()
            raise
        self.store = store

    async def _become_writer(self, store: EventStore) -> None:
        try:
            await store.acquire_writer(timeout=FIRST_TRY)
        except StoreBusy:
            self.writer = "waiting"
            log.warning("another recorder holds the event store: waiting until it stops (this one records nothing "
                        "meanwhile)", extra={"store": str(self.location)})
            await store.acquire_writer(timeout=None)
        self.writer = "holding"
        log.info("this recorder holds the event store: recording", extra={"store": str(self.location)})

    def checks(self) -> dict[str, bool]:
        """store_writer: this recorder holds the store's writer lock (false: another one does, it waits)."""
        return {"store_writer": self.writer == "holding"}

    async def prepare(self, inputs: Sequence[Incoming]) -> None:
        self.queued = []

    def handle(self, incoming: Incoming, now: datetime) -> list[Any]:
        self.queued.append(StoredEvent.of(incoming, recorded_at=now))
        return []

    async def record(self) -> None:
        """Commit the batch (StoreUnavailable, a Transient, retries it in place). A recorder whose fence
        another took meanwhile (its session was lost) stops: it would hold its batch, retrying for ever."""
        assert self.store is not None, "open() opens the store"
        try:
            await self.store.append(self.queued)
        except StoreBusy as exc:
            self.writer = "waiting"
            raise Fatal(f"this recorder lost the event store's writer fence to another: {exc}") from exc
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
                return web.json_response({"error": f"store not open yet (writer: {self.writer})",
                                          "writer": self.writer}, status=503)
            return web.json_response(msgspec.to_builtins(await self.store.stats())
                                     | {"path": str(self.location), "writer": self.writer})

        return [web.get("/v1/store", stats)]


def build(environ=None) -> RecorderAgent:
    """The recorder from TRADEFLOW_STORE."""
    return RecorderAgent(store_location(environ))
