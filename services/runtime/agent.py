"""What an agent gives the runtime: which subjects it consumes and a synchronous handler.

The handler turns one decoded input into zero or more output events. Stateful
agents also give `snapshot()`/`restore()`, so the runtime can roll their state
back when the outputs of a batch could not be made durable, and their state is
rebuilt at start-up by folding already-processed history through `handle()`.

An agent with effects outside the stream (a ledger, a file, the cache) may also give
four coroutines, all optional:
  open(context)      at start, before the state is rebuilt: open files, take the cache;
  prepare(inputs)    before a batch is handled: begin it, look up what handle() will need;
  record()           after the batch is handled, before its outputs are published: make what
                     handle() queued durable; raising Transient rolls the batch back and retries it.
  close()            at the end, when open() succeeded.
The pure logic never sees them.

An agent may also give `cause_of(output) -> (trace id, causation id) | None`, for an output
that belongs to an earlier input's journey than the one being handled (a fill made on the bar
after its order); the default is the input's trace, caused by the input. And `output_key(output)
-> str | None`, for an output that exists once whichever input leads to it (an order's fill): its
event id is derived from that key rather than from the input and the output's place (output_id).

Optional class attributes change what the runtime does for an agent:
  dedup = False          skip the Redis dedup registry: the agent's effects are idempotent by event id;
  dead_letters = False   term undecodable input without copying it to the DLQ: another stage owns it;
  wait_for_dedup = True  (stateful) while Redis is away, ack no output: a batch with outputs has its marks
                         written before its acks; by default a stateful agent writes its marks after its
                         acks, and keeps them while Redis is away (what is done is its tracking record's
                         to say, services/runtime/tracking.py; decisions.mark_before_ack says why).
  linger = 0.25          (seconds) the agent is off the trading path (the recorder, audit): after a small
                         batch the worker waits this long for the next one to fill, and fetches none
                         ahead; fewer, larger batches cost far less at light load.
  partitionable = True   its state is per symbol: replicas may share the symbols out
                         (TRADEFLOW_PARTITION, services/runtime/partition.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from contracts.codec import Incoming
from contracts.envelope import derive_id
from contracts.events import Event
from services.runtime.cache import Cache
from services.runtime.metrics import Metrics
from services.runtime.pool import ComputePool
from services.runtime.tasks import TaskManager


class Agent(Protocol):
    """A pipeline stage: pure logic behind a thin, synchronous adapter.

    It may also define `routes() -> list[aiohttp.web.RouteDef]` to serve extra HTTP endpoints.
    """

    name: str
    consumes: Sequence[str]     # JetStream filter subjects, e.g. ("data_ready.>",)
    stateful: bool              # True: needs dedup to be reachable, rebuilt from history

    def handle(self, incoming: Incoming, now: datetime) -> Sequence[Event]:
        """Outputs for one input; raises Rejected for an input it can never accept."""
        ...

    def snapshot(self) -> Any:
        """An opaque copy of the state (stateless agents return None)."""
        ...

    def restore(self, snapshot: Any) -> None:
        """Put back a state taken by snapshot()."""
        ...


@dataclass(frozen=True)
class AgentContext:
    """What `open()` is given: the cache, the service's data directory, its metrics, and its pools for
    off-loop work (CPU-heavy features in processes, blocking I/O in threads)."""

    cache: Cache | None   # None when the service runs without Redis (tests of one agent)
    data_dir: Path
    metrics: Metrics
    pool: ComputePool | None = None


class Publish(Protocol):
    """Publishes (event id, event) pairs and returns once all are durable."""

    async def __call__(self, events: Sequence[tuple[str, Event]]) -> None: ...


class ProducerContext(Protocol):
    """What a producing agent (data, dashboard) is given: a publish function, the JetStream context, the
    connection, the service's task manager and metrics, and the event set when the service stops (a
    producer that runs until then returns once it is set)."""

    publish: Publish
    js: Any
    jsm: Any
    nc: Any
    tasks: TaskManager
    metrics: Metrics
    stopping: asyncio.Event


Producer = Callable[[ProducerContext], Coroutine[Any, Any, None]]


def output_id(agent: object, input_id: str, index: int, output: Event) -> str:
    """The event id of an agent's `index`-th output for the input `input_id`: derived from the two (a
    redelivered input gives the same ids), or from the agent's `output_key` for that output when it names
    one (an order's fill has one id, made on the order or on any later bar, so the stream's duplicate
    window drops a fill published again, and the pure simulation derives the same)."""
    key = getattr(agent, "output_key", None)
    named = key(output) if key is not None else None
    name: str = agent.name   # type: ignore[attr-defined]   # an Agent, or a simulation's copy of one
    return derive_id(name, named, 0) if named else derive_id(name, input_id, index)
