"""State rebuild at start-up: fold the inputs a service already processed through its handler.

"Already processed" is what the durable consumer acknowledged (every stream
sequence up to its ack floor) plus what lies above the floor but is marked done
in the dedup registry, less what the service gave up on (dead-lettered: the
ADVISORIES stream records those for good). Everything else will be delivered
again and handled live.

The stream keeps a bounded window (TRADEFLOW_STREAM_MAX_AGE); the event store keeps
everything. When processed history has aged out of the stream, the part that is gone
is folded from the store first (TRADEFLOW_STORE, or the recorder's file under
TRADEFLOW_DATA_DIR), then the rest from the stream. The store must hold all of it: the
recorder records every pipeline subject in stream order (services/recorder/service.py), so
its highest sequence says how far it has got. A store that is behind (or missing) is
waited for, up to TRADEFLOW_REBUILD_WAIT seconds, and then the service refuses to start
(ConfigError, one line): a short history is never folded.

What was folded is also the state's tracking record (services/runtime/tracking.py): the ack floor,
and the sequences above it folded in or given up on. Live, the worker takes anything it holds as
done, and handles anything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime, timezone
from typing import Literal

from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, JetStreamManager
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_exponential

from contracts.codec import Incoming, decode
from contracts.errors import BadInput, ConfigError, Transient
from contracts.subjects import PIPELINE_STREAM
from replay.store import EventStore, Location
from services.runtime.advisories import given_up
from services.runtime.agent import Agent
from services.runtime.dedup import DedupRegistry
from services.runtime.permissions import rebuild_consumer
from services.runtime.store import open_event_store
from services.runtime.tracking import Tracking

log = logging.getLogger(__name__)


async def rebuild_state(agent: Agent, js: JetStreamContext, jsm: JetStreamManager,
                        durable: str, dedup: DedupRegistry, batch: int = 1000, store: Location | None = None,
                        wait: float = 60.0) -> tuple[int, Tracking]:
    """Replay processed history into `agent`; how many events were folded in, and the state's tracking record.
    NATS or Redis away meanwhile is waited out (up to _OUTAGE); the fold goes on where it was. History aged
    out of the stream comes from `store`, once it holds all of it (waiting up to `wait` seconds; ConfigError
    if it does not)."""
    async for attempt in _through_outages("reading the consumer"):
        with attempt:
            info = await jsm.consumer_info(PIPELINE_STREAM, durable)
            first = (await jsm.stream_info(PIPELINE_STREAM)).state.first_seq
            dead = await given_up(jsm, durable)
    floor = info.ack_floor.stream_seq
    last = info.delivered.stream_seq
    tracking = Tracking(floor, dead)
    if last == 0:
        return 0, tracking
    needed = needed_from_store(first, floor)
    aged = await fold_from_store(agent, store, needed, first=first, dead=dead, wait=wait) if needed else 0
    fold = _StreamFold(agent, js, jsm, durable, dedup, batch, floor, last, dead, tracking)
    async for attempt in _through_outages("folding the stream"):
        with attempt:
            await fold.run()
    log.info("state rebuilt", extra={"events": fold.folded, "ack_floor": floor, "delivered": last,
                                     "held_above_floor": len(tracking)})
    return aged + fold.folded, tracking


_OUTAGE = 120.0   # seconds of NATS or Redis away a rebuild waits out before the service gives up (and is restarted)


def _through_outages(what: str) -> AsyncRetrying:
    def waiting(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("state rebuild waits for NATS or Redis", extra={"step": what, "error": repr(error)})

    return AsyncRetrying(retry=retry_if_exception_type((NatsError, Transient, OSError)), reraise=True,
                         wait=wait_exponential(multiplier=0.2, max=2), stop=stop_after_delay(_OUTAGE),
                         before_sleep=waiting)


def needed_from_store(first_seq: int, ack_floor: int) -> int:
    """The highest stream sequence the rebuild must fold from the store (0: none): what was processed (up to
    the ack floor) and is gone from the stream (below its first sequence)."""
    return min(first_seq - 1, ack_floor)


Verdict = Literal["fold", "wait", "refuse"]


def judge_store(needed: int, recorded: int, waited: float, wait: float) -> Verdict:
    """Fold from the store once it holds every event up to `needed` (its highest sequence, `recorded`, is a
    watermark: the recorder records every subject in stream order, so the stage's own subjects do not
    matter); until then wait, and refuse once `wait` seconds have passed."""
    if recorded >= needed:
        return "fold"
    return "wait" if waited < wait else "refuse"


_POLL = 0.5   # seconds between two looks at how far the store has got


async def caught_up(location: Location | None, needed: int, *, first: int, wait: float) -> EventStore:
    """The store, open read-only, once it holds every event up to `needed`; ConfigError naming the store's
    setting if it still does not after `wait` seconds (or there is none)."""
    started = time.monotonic()
    store: EventStore | None = None
    said = False
    try:
        while True:
            if store is None and location is not None and (location.path is None or location.path.is_file()):
                store = await open_event_store(location, read_only=True)
            recorded = await store.last_seq() if store is not None else 0
            verdict = judge_store(needed, recorded, time.monotonic() - started, wait)
            if verdict == "fold" and store is not None:
                if said:
                    log.info("the event store caught up: the rebuild goes on",
                             extra={"store_holds_up_to_seq": recorded})
                return store
            if verdict == "refuse":
                raise ConfigError(_short_history(location, recorded, needed, first, wait))
            if not said:
                said = True
                log.warning("state rebuild waits for the event store to catch up with the stream (is the recorder "
                            "running?)", extra={"store": str(location), "store_holds_up_to_seq": recorded,
                                                "needs_up_to_seq": needed, "stream_first_seq": first,
                                                "wait_s": wait})
            await asyncio.sleep(_POLL)
    except BaseException:
        if store is not None:
            await store.close()
        raise


def _short_history(location: Location | None, recorded: int, needed: int, first: int, wait: float) -> str:
    if location is None:
        return (f"no event store to rebuild from (TRADEFLOW_STORE): the stream starts at seq {first}, seqs "
                f"1..{needed} are gone; not rebuilding a short state")
    return (f"{location.setting}: the event store {location} holds events up to seq {recorded}, the stream starts "
            f"at seq {first}: seqs {recorded + 1}..{needed} are in neither (waited {wait:g}s for the recorder, "
            "TRADEFLOW_REBUILD_WAIT); not rebuilding a short state")


async def fold_from_store(agent: Agent, location: Location | None, needed: int, *, first: int,
                          dead: AbstractSet[int] = frozenset(), wait: float = 60.0) -> int:
    """Fold the events the agent consumes with a stream sequence up to `needed` from the event store, once
    it holds them all (see `caught_up`)."""
    folded = 0
    now = datetime.now(timezone.utc)
    store = await caught_up(location, needed, first=first, wait=wait)
    try:
        batch: list[Incoming] = []
        async for e in store.query(subjects=list(agent.consumes), by="stream_seq", before_seq=needed + 1):
            if e.stream_seq in dead:
                continue
            try:
                batch.append(decode(e.subject, e.body, e.headers, sequence=e.stream_seq))
            except BadInput:   # it was dead-lettered live
                continue
            if len(batch) >= 1000:
                folded += fold(agent, batch, now)
                batch = []
        folded += fold(agent, batch, now)
    finally:
        await store.close()
    log.info("state rebuilt from the event store", extra={"events": folded, "up_to_seq": needed,
                                                         "store": str(location)})
    return folded


def fold(agent: Agent, inputs: Sequence[Incoming], now: datetime) -> int:
    """Fold inputs into the agent's state through handle(), all or nothing per input, as live: what a
    rejected input changed stands, an input the handler fails on is left out (the state put back, and the
    rest folded again without it: live, it failed too, and was dead-lettered). How many were folded."""
    snapshot = agent.snapshot()
    failed: set[int] = set()
    while True:
        folded = 0
        for position, inc in enumerate(inputs):
            if position in failed:
                continue
            try:
                agent.handle(inc, now)
                folded += 1
            except BadInput:
                continue
            except Exception:  # noqa: BLE001 - see above
                failed.add(position)
                break
        else:
            return folded
        agent.restore(snapshot)


class _StreamFold:
    """Folds what the stream still holds of the processed history, in stream order, on a consumer of its
    own. `run` may be called again after it failed (NATS or Redis away): it goes on after the last
    sequence it judged, so nothing is folded twice or skipped. What it folds above the floor goes into
    `tracking`."""

    def __init__(self, agent: Agent, js: JetStreamContext, jsm: JetStreamManager, durable: str, dedup: DedupRegistry,
                 batch: int, floor: int, last: int, dead: AbstractSet[int], tracking: Tracking) -> None:
        self.agent, self.js, self.jsm, self.durable, self.dedup = agent, js, jsm, durable, dedup
        self.batch, self.floor, self.last, self.dead, self.tracking = batch, floor, last, dead, tracking
        self.reached = 0    # every sequence up to here has been judged: folded, or left to be handled live
        self.folded = 0
        self.now = datetime.now(timezone.utc)

    async def run(self) -> None:
        agent = self.agent
        name = rebuild_consumer(self.durable)   # one name a durable: its user may make and delete only that
        try:   # one a killed run left behind (it would expire after inactive_threshold)
            await self.jsm.delete_consumer(PIPELINE_STREAM, name)
        except NotFoundError:
            pass
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.reached + 1,
            ack_policy=AckPolicy.NONE,
            filter_subjects=list(agent.consumes) if len(agent.consumes) > 1 else None,
            filter_subject=agent.consumes[0] if len(agent.consumes) == 1 else None,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        await self.jsm.add_consumer(PIPELINE_STREAM, config)
        sub = await self.js.pull_subscribe_bind(consumer=name, stream=PIPELINE_STREAM)
        try:
            while self.reached < self.last:
                try:
                    msgs = await sub.fetch(self.batch, timeout=2.0)
                except NatsTimeout:
                    if (await sub.consumer_info()).num_pending:
                        continue   # there is more: it was slow to come
                    break          # the rest of the processed history is gone from the stream
                await self._fold(msgs)
        finally:
            try:
                await sub.unsubscribe()
                await self.jsm.delete_consumer(PIPELINE_STREAM, name)
            except Exception:  # noqa: BLE001 - it expires by itself after inactive_threshold
                pass

    async def _fold(self, msgs) -> None:
        """Fold one fetched batch: what is at or below the floor, and what above it is marked done."""
        decoded = []
        for msg in msgs:
            md = msg.metadata
            seq = md.sequence.stream
            if seq > self.last:
                break
            try:
                decoded.append((seq, decode(msg.subject, msg.data, msg.headers, stream_time=md.timestamp,
                                            sequence=seq)))
            except BadInput:
                continue  # was dead-lettered when it first came
        done_above = await self.dedup.seen([inc.id for seq, inc in decoded if seq > self.floor])
        done = []   # nothing below may fail now: the batch is judged whole or not at all
        for seq, inc in decoded:
            if seq in self.dead:
                continue
            if seq <= self.floor or inc.id in done_above:
                self.tracking.add((seq,))   # done live, whether or not it folds now
                done.append(inc)
        self.folded += fold(self.agent, done, self.now)
        if msgs:
            self.reached = max(self.reached, min(msgs[-1].metadata.sequence.stream, self.last))
