"""Publishing events to JetStream with their envelope, awaiting every PubAck.

`publish_async` futures never resolve on some server errors (and while the
client is disconnected), so every wait is bounded by a timeout; a publish that
timed out is retried by the caller with the same `Nats-Msg-Id`, which the
stream's duplicate window turns into a no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timezone

import msgspec
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError

from contracts import envelope as ce
from contracts.codec import ce_type_of, encode
from contracts.envelope import Envelope
from contracts.errors import NatsUnavailable, PublishDenied
from contracts.events import Event
from contracts.subjects import subject_for
from services.runtime.connect import PermissionWatch


class Outgoing(msgspec.Struct, frozen=True):
    """An encoded message ready to publish."""

    subject: str
    body: bytes
    headers: dict[str, str]


def envelope_out(event: Event, *, service: str, event_id: str, trace_id: str,
                 causation_id: str | None, now: datetime | None = None) -> Outgoing:
    """Encode `event` with a fresh envelope from `service`."""
    subject = subject_for(event)
    env = Envelope(
        id=event_id,
        type=ce_type_of(event),
        source=service,
        time=now or datetime.now(timezone.utc),
        subject=subject,
        trace_id=trace_id,
        causation_id=causation_id,
    )
    return Outgoing(subject, encode(event), ce.headers_for(env))


class Publisher:
    """Publishes batches with a bounded window of outstanding PubAcks."""

    def __init__(self, js: JetStreamContext, *, timeout: float, window: int, watch: PermissionWatch | None = None) -> None:
        self._js = js
        self._timeout = timeout
        self._window = asyncio.Semaphore(window)
        self._watch = watch

    async def _one(self, out: Outgoing) -> PubAck:
        async with self._window:
            try:
                future = await self._js.publish_async(out.subject, out.body, headers=out.headers)
                return await asyncio.wait_for(future, self._timeout)
            except (asyncio.TimeoutError, NatsError, APIError, ConnectionError) as exc:
                refused = self._watch and self._watch.refused(out.subject)
                if refused:
                    raise PublishDenied(f"publish to {out.subject} refused by NATS: {refused}") from exc
                raise NatsUnavailable(f"publish to {out.subject} not acknowledged: {type(exc).__name__} {exc}") from exc

    async def publish(self, batch: Sequence[Outgoing]) -> list[PubAck]:
        """Publish every message and return their PubAcks once all are durable; NatsUnavailable otherwise.

        A PubAck with `duplicate` set is a message the stream already held (same Nats-Msg-Id).
        """
        if len(batch) <= 1:
            return [await self._one(out) for out in batch]
        results = await asyncio.gather(*(self._one(out) for out in batch), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):  # CancelledError included: never swallowed
                raise result
        return results
