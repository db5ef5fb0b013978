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
    """Publishes batches, at most `window` PubAcks outstanding, every wait bounded by `timeout`.

    A batch goes out as `publish_async` calls, `window` at a time, and its PubAcks are awaited
    together, once per window (no task or timer per message).
    """

    def __init__(self, js: JetStreamContext, *, timeout: float, window: int,
                 watch: PermissionWatch | None = None) -> None:
        self._js = js
        self._timeout = timeout
        self._window = max(1, window)
        self._watch = watch

    def _failed(self, out: Outgoing, exc: BaseException) -> Exception:
        refused = self._watch and self._watch.refused(out.subject)
        if refused:
            return PublishDenied(f"publish to {out.subject} refused by NATS: {refused}")
        return NatsUnavailable(f"publish to {out.subject} not acknowledged: {type(exc).__name__} {exc}")

    async def publish(self, batch: Sequence[Outgoing]) -> list[PubAck]:
        """Publish every message and return their PubAcks once all are durable; NatsUnavailable (or
        PublishDenied) otherwise. A PubAck with `duplicate` set is a message the stream already held
        (same Nats-Msg-Id)."""
        acks: list[PubAck] = []
        for start in range(0, len(batch), self._window):
            acks += await self._publish_window(batch[start:start + self._window])
        return acks

    async def _publish_window(self, chunk: Sequence[Outgoing]) -> list[PubAck]:
        futures: list[asyncio.Future] = []
        try:
            for out in chunk:
                try:
                    futures.append(await self._js.publish_async(out.subject, out.body, headers=out.headers))
                except (NatsError, APIError, ConnectionError) as exc:
                    raise self._failed(out, exc) from exc
            if futures:
                await asyncio.wait(futures, timeout=self._timeout)
            acks = []
            for out, future in zip(chunk, futures):
                if not future.done():
                    raise self._failed(out, asyncio.TimeoutError(f"no PubAck within {self._timeout:g}s"))
                if future.cancelled():   # the connection closed under it: not this task's cancellation
                    raise self._failed(out, ConnectionError("publish cancelled by the client"))
                if (error := future.exception()) is not None:
                    raise self._failed(out, error) from error
                acks.append(future.result())
            return acks
        finally:
            for future in futures:   # a future left pending would hold a slot of the client's window for good
                if not future.done():
                    future.cancel()
