"""Re-drive recorded events into a running pipeline, at full speed or N times real time.

A replayed event keeps its subject and body and gets a new envelope:

    ce-id = Nats-Msg-Id = derive_id("replay", "<run id>:<original id>", 0)
    ce-source = replay, ce-time = now, ce-causationid = the original id
    traceparent: a new trace (the replay's journey is not mixed into the original's)
    tradeflow-replay-run: the run id        tradeflow-replay-of: the original id

so the same run replayed twice publishes the same ids: JetStream's duplicate window drops
them, and past it every service's dedup registry skips them. The services pass the
`tradeflow-replay-run` header on to what they publish, so a replay's outputs say so too.
The run id is derived from what is replayed unless given (`--run-id`): repeating a command
is a no-op, a new run id replays the same window again.

`--isolate NAME` publishes to `replay.NAME.<subject>` in the REPLAY stream instead, where
no live consumer listens: the window can be inspected (`nats stream view REPLAY`) without
touching the pipeline.

Replaying into the pipeline that recorded the window re-drives bars that its strategy has
already moved past: they are dead-lettered as out of order, by design (a stateful stage never
goes back in time). Replay into a fresh deployment, or isolated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timezone

import msgspec
from nats.js import JetStreamContext, JetStreamManager
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from contracts import envelope as ce
from contracts.errors import TradeflowError
from contracts.subjects import PIPELINE_STREAM, STAGES, stage_of
from replay.store import StoredEvent
from services.runtime.publish import Outgoing, Publisher
from services.runtime.topology import consumed

REPLAY_RUN, REPLAY_OF = ce.REPLAY_RUN, ce.REPLAY_OF
REPLAY_STREAM = "REPLAY"
REPLAY_PREFIX = "replay"
_BATCH = 500


class ReplayError(TradeflowError):
    """Raised when a replay cannot start: no pipeline to replay into, nothing to replay."""


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a replay did: events read, published as new, dropped as already replayed."""

    run_id: str
    read: int
    published: int
    duplicates: int
    seconds: float
    target: str


def run_id_for(description: str) -> str:
    """The default run id: the same filters and target give the same run."""
    return ce.derive_id("replay-run", description, 0)[:16]


def replayed(event: StoredEvent, run_id: str, isolate: str | None = None, now: datetime | None = None) -> Outgoing:
    """The message that replays `event` in run `run_id`."""
    new_id = ce.derive_id("replay", f"{run_id}:{event.id}", 0)
    env = ce.Envelope(id=new_id, type=event.type, source="replay", time=now or datetime.now(timezone.utc),
                      subject=event.subject, trace_id=ce.trace_id_for(new_id), causation_id=event.id)
    headers = ce.headers_for(env) | {REPLAY_RUN: run_id, REPLAY_OF: event.id}
    subject = f"{REPLAY_PREFIX}.{isolate}.{event.subject}" if isolate else event.subject
    return Outgoing(subject, event.body, headers)


def replay_stream() -> StreamConfig:
    """REPLAY: isolated replays under replay.<name>.<subject>, kept a week."""
    return StreamConfig(name=REPLAY_STREAM, subjects=[f"{REPLAY_PREFIX}.>"], retention=RetentionPolicy.LIMITS,
                        storage=StorageType.FILE, discard=DiscardPolicy.OLD, max_age=7 * 24 * 3600.0,
                        duplicate_window=120.0, description="tradeflow isolated replays")


async def check_target(jsm: JetStreamManager, stages: Sequence[str], isolate: str | None) -> None:
    """ReplayError unless there is somewhere to replay to: a live consumer for every replayed stage
    (a service waiting for messages), or the REPLAY stream when isolated."""
    if isolate:
        try:
            await jsm.stream_info(REPLAY_STREAM)
        except NotFoundError:
            await jsm.add_stream(replay_stream())
        return
    try:
        await jsm.stream_info(PIPELINE_STREAM)
    except NotFoundError:
        raise ReplayError("no PIPELINE stream on this NATS server: is tradeflow running? (tradeflow up)") from None
    live = set()
    for info in await jsm.consumers_info(PIPELINE_STREAM):
        if info.num_waiting > 0 and (info.config.durable_name or "") != "recorder":
            live.update(stage_of(f) for f in consumed(info.config))
    idle = [stage for stage in stages if stage not in live and ">" not in live]
    if idle:
        raise ReplayError(f"no service is consuming {', '.join(idle)} right now: start the pipeline "
                          "(tradeflow up), or replay with --isolate NAME")


async def replay(events: AsyncIterator[StoredEvent], js: JetStreamContext, *, run_id: str,
                 speed: float = 0.0, isolate: str | None = None, by: str = "event_ts",
                 progress: Callable[[int], None] = lambda n: None, timeout: float = 10.0) -> ReplayResult:
    """Publish every event of `events` (in their order) as run `run_id`; 0 speed is as fast as possible,
    N paces them at N times the gaps between their `by` times."""
    publisher = Publisher(js, timeout=timeout, window=1024)
    started = time.monotonic()
    first: datetime | None = None
    read = published = duplicates = 0
    batch: list[Outgoing] = []

    async def flush() -> None:
        nonlocal published, duplicates, batch
        acks = await publisher.publish(batch)
        dup = sum(1 for ack in acks if ack.duplicate)
        published, duplicates = published + len(acks) - dup, duplicates + dup
        progress(len(batch))
        batch = []

    async for event in events:
        read += 1
        if speed > 0:
            at = event.event_ts if by == "event_ts" else event.time
            first = first or at
            due = started + (at - first).total_seconds() / speed
            if due > time.monotonic():
                if batch:
                    await flush()
                await asyncio.sleep(due - time.monotonic())
        batch.append(replayed(event, run_id, isolate))
        if len(batch) >= _BATCH:
            await flush()
    if batch:
        await flush()
    return ReplayResult(run_id=run_id, read=read, published=published, duplicates=duplicates,
                        seconds=round(time.monotonic() - started, 3),
                        target=f"{REPLAY_STREAM} ({REPLAY_PREFIX}.{isolate}.>)" if isolate else PIPELINE_STREAM)


def stages_of(subjects: Sequence[str]) -> list[str]:
    """The pipeline stages a set of subject patterns can reach."""
    firsts = {stage_of(s) for s in subjects}
    return list(STAGES) if firsts & {"*", ">"} else [s for s in STAGES if s in firsts]
