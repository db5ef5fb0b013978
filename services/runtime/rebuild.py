"""State rebuild at start-up: fold the inputs a service already processed through its handler.

"Already processed" is what the durable consumer acknowledged (every stream
sequence up to its ack floor) plus what lies above the floor but is marked done
in the dedup registry, less what the service gave up on (dead-lettered: the
ADVISORIES stream records those for good). Everything else will be delivered
again and handled live.

The stream keeps a bounded window (TRADEFLOW_STREAM_MAX_AGE); the event store keeps
everything. When processed history has aged out of the stream, the part that is gone
is folded from the store first (TRADEFLOW_STORE, or the recorder's file under
TRADEFLOW_DATA_DIR), then the rest from the stream. Without a store the state is rebuilt
from what the stream still holds, and the log says what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from datetime import datetime, timezone
from pathlib import Path

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, JetStreamManager
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.codec import decode
from contracts.envelope import derive_id
from contracts.errors import BadInput
from contracts.subjects import PIPELINE_STREAM
from replay.store import SqliteEventStore
from services.runtime.advisories import given_up
from services.runtime.agent import Agent
from services.runtime.dedup import DedupRegistry

log = logging.getLogger(__name__)


async def rebuild_state(agent: Agent, js: JetStreamContext, jsm: JetStreamManager,
                        durable: str, dedup: DedupRegistry, batch: int = 1000, store: Path | None = None) -> int:
    """Replay processed history into `agent`; returns how many events were folded in."""
    info = await jsm.consumer_info(PIPELINE_STREAM, durable)
    floor = info.ack_floor.stream_seq
    last = info.delivered.stream_seq
    if last == 0:
        return 0
    first = (await jsm.stream_info(PIPELINE_STREAM)).state.first_seq
    dead = await given_up(js, jsm, durable)
    aged = await fold_from_store(agent, store, below=min(first, floor + 1), dead=dead) if first > 1 and floor else 0
    return aged + await _fold_from_stream(agent, js, jsm, durable, dedup, batch, floor, last, dead)


async def fold_from_store(agent: Agent, path: Path | None, below: int, dead: AbstractSet[int] = frozenset()) -> int:
    """Fold the events the agent consumes with a stream sequence below `below` from the event store."""
    if path is None or not path.is_file():
        log.warning("history aged out of the stream and there is no event store to rebuild it from: state "
                    "covers only what the stream holds", extra={"missing_below_seq": below, "store": str(path)})
        return 0
    folded = 0
    now = datetime.now(timezone.utc)
    async with SqliteEventStore.open(path, read_only=True) as store:
        async for e in store.query(subjects=list(agent.consumes), by="stream_seq", before_seq=below):
            if e.stream_seq in dead:
                continue
            try:
                agent.handle(decode(e.subject, e.body, e.headers, sequence=e.stream_seq), now)
                folded += 1
            except Exception:  # noqa: BLE001 - bad input or a handler error: it was dead-lettered live
                continue
    log.info("state rebuilt from the event store", extra={"events": folded, "below_seq": below, "store": str(path)})
    return folded


async def _fold_from_stream(agent: Agent, js: JetStreamContext, jsm: JetStreamManager, durable: str,
                            dedup: DedupRegistry, batch: int, floor: int, last: int, dead: AbstractSet[int]) -> int:
    """Fold what the stream still holds of the processed history."""
    name = "rebuild-" + derive_id(durable, datetime.now(timezone.utc).isoformat(), 0)[:12]
    config = ConsumerConfig(
        name=name,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        filter_subjects=list(agent.consumes) if len(agent.consumes) > 1 else None,
        filter_subject=agent.consumes[0] if len(agent.consumes) == 1 else None,
        inactive_threshold=30.0,
        mem_storage=True,
    )
    await jsm.add_consumer(PIPELINE_STREAM, config)
    sub = await js.pull_subscribe_bind(consumer=name, stream=PIPELINE_STREAM)
    folded = 0
    now = datetime.now(timezone.utc)
    try:
        reached = 0
        while reached < last:
            try:
                msgs = await sub.fetch(batch, timeout=2.0)
            except NatsTimeout:
                break
            decoded = []
            for msg in msgs:
                md = msg.metadata
                reached = md.sequence.stream
                if reached > last:
                    break
                try:
                    decoded.append((md.sequence.stream, decode(msg.subject, msg.data, msg.headers,
                                                               stream_time=md.timestamp, sequence=reached)))
                except BadInput:
                    continue  # was dead-lettered when it first came
            above = [inc.id for seq, inc in decoded if seq > floor]
            done_above = await dedup.seen(above)
            for seq, inc in decoded:
                if seq in dead:
                    continue
                if seq <= floor or inc.id in done_above:
                    try:
                        agent.handle(inc, now)
                        folded += 1
                    except Exception:  # it failed live too, and was dead-lettered
                        continue
    finally:
        await sub.unsubscribe()
        try:
            await jsm.delete_consumer(PIPELINE_STREAM, name)
        except Exception:  # noqa: BLE001 - it expires by itself after inactive_threshold
            pass
    log.info("state rebuilt", extra={"events": folded, "ack_floor": floor, "delivered": last})
    return folded
