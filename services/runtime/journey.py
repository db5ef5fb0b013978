"""The journey deadline: an event some stage has not processed within TRADEFLOW_JOURNEY_TIMEOUT is overdue.

A bar's journey through the pipeline takes milliseconds. One that is still waiting before a stage after
minutes is stuck there: a paused consumer, a crash-looping service, a message waiting out its backoff.
A pending count says that something waits, not for how long. Each consuming stage's oldest waiting
event is the first message after its consumer's ack floor that the consumer takes (its filters): its
age is how long it has waited, and past the deadline the stage is flagged overdue (the metric
`tradeflow_oldest_waiting_seconds`, `tradeflow status`, the dashboard, the alert rule in
deploy/prometheus/alerts.yml).
"""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
from nats.js import JetStreamManager
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

_MAX_ASKED = 4            # filters asked one by one; more are asked as one (see oldest_waiting)


class Waiting(msgspec.Struct, frozen=True):
    """A stage's oldest waiting event: its stream sequence and subject, and since when it has waited."""

    seq: int
    subject: str
    since: datetime

    def age(self, now: datetime | None = None) -> float:
        """Seconds it has waited."""
        return max(0.0, ((now or datetime.now(timezone.utc)) - self.since).total_seconds())


def overdue(waiting: Waiting | None, timeout: float, now: datetime | None = None) -> bool:
    """Whether a stage's oldest waiting event has waited longer than `timeout` seconds."""
    return waiting is not None and waiting.age(now) > timeout


def filters_of(info: ConsumerInfo) -> list[str]:
    """The subjects a consumer takes: its filter, its filters, or everything (`>`)."""
    config = info.config
    if config.filter_subject:
        return [config.filter_subject]
    return list(config.filter_subjects or []) or [">"]


async def oldest_waiting(jsm: JetStreamManager, stream: str, info: ConsumerInfo) -> Waiting | None:
    """The oldest message the consumer has not processed (the first one after its ack floor that it takes),
    or None when nothing waits for it. One request a filter, up to four; a consumer with more (a replica's
    symbols) gets the first message after its floor, whatever its subject: never younger than its own."""
    if not (info.num_pending or info.num_ack_pending):
        return None
    after = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
    filters = filters_of(info)
    if len(filters) > _MAX_ASKED:   # a replica's many symbols: the first message after the floor, whatever its
        filters = [">"]             # subject, is as old or older: an upper bound of the age, in one request
    found: list[Waiting] = []
    for subject in filters:
        try:
            msg = await jsm.get_msg(stream, seq=after, subject=subject, next=True)
        except NotFoundError:   # nothing of this filter after the floor (aged out, or another filter's)
            continue
        if msg.seq is not None and msg.time is not None:
            found.append(Waiting(msg.seq, msg.subject or "", msg.time))
    return min(found, key=lambda w: w.seq, default=None)
