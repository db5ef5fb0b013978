"""State rebuild at start-up: fold the inputs a service already processed through its handler.

"Already processed" is what the durable consumer acknowledged (every stream
sequence up to its ack floor) plus what lies above the floor but is marked done
in the dedup registry. Everything else will be delivered again and handled live.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from nats.js import JetStreamContext, JetStreamManager
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.errors import TimeoutError as NatsTimeout

from contracts.codec import decode
from contracts.envelope import derive_id
from contracts.errors import BadInput
from contracts.subjects import PIPELINE_STREAM
from services.runtime.agent import Agent
from services.runtime.dedup import DedupRegistry

log = logging.getLogger(__name__)


async def rebuild_state(agent: Agent, js: JetStreamContext, jsm: JetStreamManager,
                        durable: str, dedup: DedupRegistry, batch: int = 1000) -> int:
    """Replay processed history into `agent`; returns how many events were folded in."""
    info = await jsm.consumer_info(PIPELINE_STREAM, durable)
    floor = info.ack_floor.stream_seq
    last = info.delivered.stream_seq
    if last == 0:
        return 0
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
