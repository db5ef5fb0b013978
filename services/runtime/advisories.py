"""Dead letters the worker could not copy itself, caught from JetStream's advisories.

A message whose service crashes (or is killed) every time it handles it never reaches the
worker's copy-then-term: JetStream gives up after `max_deliver` deliveries and says so in a
MAX_DELIVERIES advisory. The ADVISORIES stream keeps those advisories (and MSG_TERMINATED
ones) for PIPELINE's consumers, so none is missed while a service is down; each service
reads its own with a durable consumer (`<service>-advisories`) and copies the message it
names from PIPELINE to `dlq.<service>.<subject>`, with the deliveries and the reason.

The copy has the same Nats-Msg-Id as the worker's would, and a copy already in the DLQ is
looked up first, so a message the worker dead-lettered and termed is not copied twice.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext, JetStreamManager
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from contracts.deadletters import DLQ_SEQUENCE
from contracts.errors import PublishDenied
from contracts.subjects import ADVISORY_STREAM, DLQ_STREAM, PIPELINE_STREAM, dlq_subject
from services.runtime.config import RuntimeSettings
from services.runtime.deadletters import dead_letter_copy
from services.runtime.decisions import backoff_delay
from services.runtime.metrics import Metrics
from services.runtime.pause import pause
from services.runtime.permissions import advisory_consumer
from services.runtime.publish import Publisher

log = logging.getLogger(__name__)

MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
TERMINATED = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"


class Advisory(msgspec.Struct, frozen=True):
    """The fields of a max_deliver / terminated advisory that say which message and how often."""

    type: str
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0
    reason: str = ""


_decode = msgspec.json.Decoder(Advisory).decode


def advisory_stream(settings: RuntimeSettings) -> StreamConfig:
    """ADVISORIES: PIPELINE consumers' max-deliveries and terminated advisories, kept for good (they are few):
    the durable record of which messages each service gave up on, which its state rebuild leaves out."""
    return StreamConfig(
        name=ADVISORY_STREAM, subjects=[f"{MAX_DELIVERIES}.{PIPELINE_STREAM}.*", f"{TERMINATED}.{PIPELINE_STREAM}.*"],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, discard=DiscardPolicy.OLD,
        max_age=0, max_msgs=10_000_000, duplicate_window=120.0, num_replicas=settings.stream_replicas,
        description="tradeflow: JetStream advisories of messages a service gave up on")


def _subjects(service: str) -> list[str]:
    return [f"{MAX_DELIVERIES}.{PIPELINE_STREAM}.{service}", f"{TERMINATED}.{PIPELINE_STREAM}.{service}"]


def advisory_consumer_config(consumer: str, settings: RuntimeSettings, *, terminated: bool = True) -> ConsumerConfig:
    """The durable on ADVISORIES that reads what JetStream gave up on for the PIPELINE durable `consumer`
    (`<consumer>-advisories`): its max-deliveries advisories, and its terminated ones if `terminated`."""
    subjects = _subjects(consumer) if terminated else _subjects(consumer)[:1]
    return ConsumerConfig(durable_name=advisory_consumer(consumer), deliver_policy=DeliverPolicy.ALL,
                          ack_policy=AckPolicy.EXPLICIT, ack_wait=settings.ack_wait, max_ack_pending=256,
                          filter_subjects=subjects)


async def given_up(jsm: JetStreamManager, service: str) -> set[int]:
    """The PIPELINE sequences `service` gave up on (dead-lettered and termed, or delivered max_deliver times)."""
    try:
        info = await jsm.stream_info(ADVISORY_STREAM,
                                     subjects_filter=f"$JS.EVENT.ADVISORY.CONSUMER.*.{PIPELINE_STREAM}.{service}")
    except NotFoundError:
        return set()
    seqs: set[int] = set()
    for subject, count in (info.state.subjects or {}).items():
        at = 1
        for _ in range(count):   # one message at a time, by sequence: read-only, no consumer of its own
            try:
                msg = await jsm.get_msg(ADVISORY_STREAM, seq=at, subject=subject, next=True)
            except NotFoundError:
                break
            at = (msg.seq or at) + 1
            try:
                seqs.add(_decode(msg.data or b"").stream_seq)
            except msgspec.DecodeError:
                continue
    return seqs


class DeadLetterCapture:
    """Copies to the DLQ what the advisories of one service's consumer name, until `stopping` is set."""

    def __init__(self, service: str, js: JetStreamContext, jsm: JetStreamManager, publisher: Publisher,
                 metrics: Metrics, settings: RuntimeSettings, *, consumer: str | None = None) -> None:
        """`consumer`: the PIPELINE durable whose advisories these are, when it is not named after the
        service (a partitioned replica). Which advisories its durable reads (terminated ones too, or not
        for an agent that terms bad input on purpose) is `advisory_consumer_config`'s, at provisioning."""
        consumer = consumer or service
        self.service, self.js, self.jsm, self.publisher = service, js, jsm, publisher
        self.metrics, self.settings = metrics, settings
        self.durable = advisory_consumer(consumer)
        self.stopping = asyncio.Event()

    async def bind(self):
        """The durable consumer on this service's advisories (`tradeflow init` declares it)."""
        return await self.js.pull_subscribe_bind(durable=self.durable, stream=ADVISORY_STREAM)

    async def run(self) -> None:
        """Bind, then copy what each advisory names, riding out NATS outages, until `stopping`;
        only a refused publish (a deployment error) ends it early."""
        sub, failures = None, 0
        try:
            while not self.stopping.is_set():
                try:
                    sub = sub or await self.bind()
                    msgs = await sub.fetch(32, timeout=self.settings.fetch_timeout)
                except (NatsTimeout, asyncio.TimeoutError):
                    continue
                except Exception as exc:  # noqa: BLE001 - NATS away: wait and go on
                    failures += 1
                    log.warning("advisories not read", extra={"error": repr(exc)})
                    await pause(backoff_delay(self.settings.backoff, failures), self.stopping)
                    continue
                for msg in msgs:
                    try:
                        await self.capture(msg.data)
                        await msg.ack()
                        failures = 0
                    except PublishDenied:
                        raise
                    except Exception as exc:  # noqa: BLE001 - left unacked: it comes back after ack_wait
                        failures += 1
                        log.warning("advisory not handled yet", extra={"error": repr(exc)})
                        await pause(backoff_delay(self.settings.backoff, failures), self.stopping)
                        break
        finally:
            if sub is not None:
                try:
                    await sub.unsubscribe()
                except Exception as exc:  # noqa: BLE001 - closing anyway
                    log.debug("advisory subscription not closed", extra={"error": repr(exc)})



    async def capture(self, data: bytes) -> bool:
        """Copy the message an advisory names to the DLQ unless a copy is there; whether it copied."""
        try:
            advisory = _decode(data)
        except msgspec.DecodeError as exc:
            log.warning("unreadable advisory skipped", extra={"error": str(exc), "data": data[:200]})
            return False
        try:
            original = await self.jsm.get_msg(PIPELINE_STREAM, advisory.stream_seq)
        except NotFoundError:
            log.error("a message the service gave up on is no longer in the stream",
                      extra={"stream_seq": advisory.stream_seq, "advisory": advisory.type})
            return False
        subject = original.subject or ""
        if await self._already_copied(subject, advisory.stream_seq):
            return False
        crashed = advisory.type.endswith("max_deliver")
        reason = "max_deliveries" if crashed else "terminated"
        error = (f"{self.service} did not finish handling it in {advisory.deliveries} deliveries (it crashed, "
                 "was killed or timed out each time)" if crashed else
                 f"terminated by a client without a copy ({advisory.reason or 'no reason given'})")
        out = dead_letter_copy(self.service, subject, original.data or b"", original.headers, seq=advisory.stream_seq,
                               deliveries=advisory.deliveries, reason=reason, error=error)
        await self.publisher.publish([out])
        self.metrics.dead_letters.labels(self.service, reason).inc()
        log.warning("dead-lettered from an advisory", extra={"subject": subject, "reason": reason,
                                                              "stream_seq": advisory.stream_seq})
        return True

    async def _already_copied(self, subject: str, seq: int) -> bool:
        """Whether the last dead letter of this service on this subject is the copy of `seq`."""
        try:
            last = await self.jsm.get_msg(DLQ_STREAM, subject=dlq_subject(self.service, subject))
        except NotFoundError:
            return False
        return (last.headers or {}).get(DLQ_SEQUENCE) == str(seq)
