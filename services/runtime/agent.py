"""The contract between the runtime and what it runs: three shapes, one base.

- `Agent`: a pipeline stage. It consumes subjects and turns each decoded input into zero or
  more outputs with a synchronous `handle()`; the runtime does the rest (the processing contract,
  services/runtime/worker.py). Strategy, quant, risk, execution, audit and the recorder.
- `Producer`: feeds the pipeline from outside it (`produce()`, until the service stops). Data.
- `Monitor`: watches the pipeline and serves what it sees, publishing nothing into it
  (`watch()`). The dashboard.

Each is a subclass of `Component`, whose hooks all have defaults: a subclass overrides what it
needs, and a type checker sees a misspelt hook (it overrides nothing, and `@override` says so).

`handle()` is all or nothing. It returns its outputs, or raises:
  - `Rejected` (or another `BadInput`): the input can never be accepted, and is dead-lettered. What
    the handler changed stands: it judged the input (a gap in the bars resets the strategy's window).
  - anything else (a bug, a bad day): the state is put back as it was before the input (from
    `snapshot()`), the input is retried with backoff and, at its last delivery, dead-lettered.
An output is an `Event`, or an `Output` that names its id key (an output that exists once
whichever input leads to it: an order's fill) or its cause (an output that belongs to an earlier
input's journey: a fill made on the bar after its order). No hook depends on the order of calls.

A stateful agent's `snapshot()`/`restore()` let the runtime roll its state back (a handler
failure; outputs that could not be made durable), and its state is rebuilt at start-up by
folding already-processed history through `handle()`. `snapshot()` is taken once a batch,
so it should cost little (immutable state, shallow copies).

An agent with effects outside the stream (a ledger, a file, the cache) overrides the coroutines:
  open(context)      at start, before NATS is connected and the state rebuilt: open files and stores, take
                     the cache (a store it cannot use fails the start at once; a wait here, the stop ends);
  prepare(inputs)    before a batch is handled: begin it, look up what handle() will need;
  record()           after the batch is handled, before its outputs are published: make what
                     handle() queued durable; raising Transient rolls the batch back and retries it;
  close()            at the end, when open() succeeded.
The pure logic (each agent's logic.py) never sees any of this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import msgspec
from aiohttp import web

from contracts.codec import Incoming
from contracts.envelope import derive_id
from contracts.events import Event
from contracts.errors import ConfigError
from services.runtime.cache import Cache
from services.runtime.metrics import Metrics
from services.runtime.pool import ComputePool
from services.runtime.tasks import TaskManager


class Options(msgspec.Struct, frozen=True, kw_only=True):
    """How the runtime treats an agent. The defaults are a stateless stage's."""

    stateful: bool = False
    """Its state is folded from history at start-up; the worker keeps a tracking record of what it holds."""
    dedup: bool = True
    """False: no Redis dedup registry; the agent's own effects are idempotent by event id (the recorder)."""
    dead_letters: bool = True
    """False: undecodable input is termed without a copy in the DLQ: the stage that consumes it owns it."""
    wait_for_dedup: bool = False
    """(stateful) While Redis is away, ack no output: a batch with outputs has its marks written before its
    acks. By default a stateful agent writes its marks after its acks and keeps them while Redis is away
    (its tracking record says what is done, services/runtime/tracking.py; decisions.mark_before_ack why)."""
    linger: float = 0.0
    """Seconds. The agent is off the trading path (the recorder, audit): after a small batch the worker waits
    this long for the next one to fill, and fetches none ahead; fewer, larger batches cost far less."""
    partitionable: bool = False
    """(stateful) Its state is per symbol: replicas may share the symbols out (services/runtime/partition.py)."""
    in_order: bool = False
    """After a restart, what the last run left unacked is handled before anything newer, as for a stateful agent
    (the recorder: the store then fills in stream order, so its highest sequence is a watermark)."""

    def __post_init__(self) -> None:
        if self.linger < 0:
            raise ConfigError(f"agent options: linger must be 0 or more seconds, not {self.linger}")
        if (self.wait_for_dedup or self.partitionable) and not self.stateful:
            raise ConfigError("agent options: wait_for_dedup and partitionable are for stateful agents")


class Output(NamedTuple):
    """An output that says more than its event: the key its id derives from, or the journey it belongs to."""

    event: Event
    key: str | None = None                  # its event id derives from the agent and this key (see output_id)
    cause: tuple[str, str] | None = None    # (trace id, causation id): an earlier input's journey


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
    """What a producer or a monitor is given: a publish function, the JetStream context, the connection, the
    service's task manager and metrics, and the event set when the service stops (its coroutine returns
    once it is set)."""

    publish: Publish
    js: Any
    jsm: Any
    nc: Any
    tasks: TaskManager
    metrics: Metrics
    stopping: asyncio.Event


class Component:
    """What every service runs: a name, and hooks with defaults."""

    name: ClassVar[str]

    async def open(self, context: AgentContext) -> None:
        """At start, before anything is consumed or produced."""

    async def close(self) -> None:
        """At the end, when open() succeeded."""

    def routes(self) -> list[web.RouteDef]:
        """Extra HTTP endpoints, beside /v1/health, /healthz, /readyz and /metrics."""
        return []

    def checks(self) -> dict[str, bool]:
        """Readiness checks of its own, beside the runtime's (nats, redis, consumer, state): every one must hold."""
        return {}

    def micro_endpoints(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """Extra NATS micro endpoints (tradeflow.<name>.<endpoint>), beside health, stats and restart."""
        return {}


class Agent(Component):
    """A pipeline stage: pure logic behind a thin, synchronous adapter (see the module's doc)."""

    consumes: Sequence[str] = ()   # JetStream filter subjects, e.g. ("data_ready.>",); never empty for an agent
    options: ClassVar[Options] = Options()

    def handle(self, incoming: Incoming, now: datetime) -> Sequence[Event | Output]:
        """Outputs for one input; raises Rejected for an input it can never accept."""
        raise NotImplementedError

    def snapshot(self) -> Any:
        """An opaque copy of the state (a stateless agent's is None)."""
        return None

    def restore(self, snapshot: Any) -> None:
        """Put back a state taken by snapshot()."""

    async def prepare(self, inputs: Sequence[Incoming]) -> None:
        """Before a batch is handled (the inputs not done before, in order)."""

    async def record(self) -> None:
        """After the batch is handled, before its outputs are published."""


class Producer(Component):
    """Feeds the pipeline from outside it."""

    async def produce(self, context: ProducerContext) -> None:
        """Publish into the pipeline until `context.stopping` is set (or there is no more)."""
        raise NotImplementedError


class Monitor(Component):
    """Watches the pipeline and serves what it sees; publishes nothing into it."""

    async def watch(self, context: ProducerContext) -> None:
        """Watch until `context.stopping` is set."""
        raise NotImplementedError


Run = Callable[[ProducerContext], Coroutine[Any, Any, None]]


def output_id(agent_name: str, input_id: str, index: int, output: Event | Output) -> str:
    """The event id of an agent's `index`-th output for the input `input_id`: derived from the two (a
    redelivered input gives the same ids), or from the output's key when it names one (an order's fill has
    one id, made on the order or on any later bar, so the stream's duplicate window drops a fill published
    again, and the pure simulation derives the same)."""
    if type(output) is Output and output.key:
        return derive_id(agent_name, output.key, 0)
    return derive_id(agent_name, input_id, index)


def unwrap(output: Event | Output) -> tuple[Event, tuple[str, str] | None]:
    """An output's event, and the (trace id, causation id) it names (None: the input's)."""
    if type(output) is Output:
        return output.event, output.cause
    return output, None   # type: ignore[return-value]   # an Event
