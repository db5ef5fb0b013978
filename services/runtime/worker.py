"""The processing contract, in one place: decode -> handle -> publish, await PubAcks -> ack.

Per fetched batch:
  1. skip (ack) inputs already done: for a stateful agent, those its state's tracking record holds
     (services/runtime/tracking.py); for a stateless one (after decoding), those Redis marks done;
  2. decode every message; bad input is copied to the DLQ (reason in headers), then termed;
  3. call the agent's handler on each remaining input, in stream order (between the agent's
     optional `prepare` and `record` hooks);
  4. publish all outputs and await every PubAck;
  5. mark the inputs done in Redis (what the next start's rebuild folds), record them in the
     tracking record, then ack them.
A handler error naks with backoff and, at the last delivery, dead-letters the
message with the error. A Transient failure (NATS or Redis unreachable) rolls a
stateful agent back and retries the whole batch in place, keeping the messages
(and their order) in hand and telling JetStream they are in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from contracts import envelope as ce
from contracts.codec import Incoming, decode
from contracts.errors import BadInput, EffectFailed, RedisUnavailable, Transient
from services.deadletters import dead_letter_copy
from services.runtime.agent import Agent
from services.runtime.config import RuntimeSettings
from services.runtime.dedup import DedupRegistry
from services.runtime.metrics import Metrics
from services.runtime.pause import pause
from services.runtime.publish import Outgoing, Publisher, envelope_out
from services.runtime.tracing import Tracing, span_id_of
from services.runtime.tracking import Tracking

log = logging.getLogger(__name__)



def backoff_delay(schedule: Sequence[float], attempt: int) -> float:
    """Delay before retry number `attempt` (1-based), the last step repeating."""
    if not schedule:
        return 0.0
    return schedule[min(max(attempt, 1), len(schedule)) - 1]


_YIELD_EVERY = 32          # messages handled between two turns of the event loop
_MAX_UNMARKED = 100_000   # ids kept in memory during a Redis outage before a stateful agent waits


def take_queued_first(sub: JetStreamContext.PullSubscription) -> None:
    """Make `fetch` take messages already queued on the subscription without nats-py's per-message cost.

    nats-py's `fetch` reads each message of a batch with `next_msg`, which makes a task, a timer and
    a uuid for every one, even when the message is already in the subscription's queue (about half
    of what a message costs a service; nats-py PRs #752 and #862 address it upstream). Here a queued
    message is taken at once, with the same bookkeeping; an empty queue goes to nats-py's own
    `next_msg`, timeout and all. Left alone if this nats-py lays its subscription out otherwise.
    """
    inner = getattr(sub, "_sub", None)
    queue = getattr(inner, "_pending_queue", None)
    if queue is None or not hasattr(inner, "_pending_size") or getattr(inner, "_cb", None):
        return
    wait_for_next = inner.next_msg

    async def next_msg(timeout: float | None = 1.0) -> Msg:
        if queue.empty() or inner._conn.is_closed:
            return await wait_for_next(timeout)
        msg = queue.get_nowait()
        inner._pending_size -= len(msg.data)
        queue.task_done()
        return msg

    inner.next_msg = next_msg


class Worker:
    """Runs one agent over one pull subscription."""

    def __init__(self, agent: Agent, sub: JetStreamContext.PullSubscription, *, publisher: Publisher,
                 dedup: DedupRegistry, metrics: Metrics, settings: RuntimeSettings, consumer: str | None = None,
                 tracing: Tracing | None = None, tracking: Tracking | None = None) -> None:
        """`tracking`: what the rebuilt state of a stateful agent holds (an empty record if not given)."""
        self.agent = agent
        self.tracking = (tracking or Tracking()) if agent.stateful else None
        self.tracing = tracing
        self.sub = sub
        take_queued_first(sub)
        self.publisher = publisher
        self.dedup = dedup
        self.metrics = metrics
        self.settings = settings
        self.stopping = asyncio.Event()
        self.service = agent.name
        self._ahead: asyncio.Task | None = None           # the next batch's fetch, under way while one is processed
        self.uses_dedup = getattr(agent, "dedup", True)   # False: the agent's own effects are idempotent by id
        self.waits_for_dedup = getattr(agent, "wait_for_dedup", False)
        self.unmarked: list[str] = []                      # done while Redis was away, to mark when it is back
        self.suspect_file = Path(settings.data_dir) / (consumer or self.service) / "suspect"   # one per replica
        self.suspect = self.suspect_file.read_text().strip() if self.suspect_file.is_file() else None
        if self.suspect:
            log.warning("the last run ended while handling a message: it is tried last, alone",
                        extra={"event_id": self.suspect})

    async def run(self) -> None:
        """Fetch and process batches until `stopping` is set; then nak what was fetched but not begun.

        The next batch is fetched while this one is worked on (one fetch ahead, kept alive with it),
        so a service does not wait for its messages between batches; batches are still processed,
        and acked, one after the other, in stream order.
        """
        failures = 0
        try:
            while not self.stopping.is_set():
                fetching, self._ahead = self._ahead or self._fetch(), None
                try:
                    msgs = await fetching
                except (NatsTimeout, asyncio.TimeoutError):
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # disconnected, closed, server error: wait and go on
                    failures += 1
                    log.warning("fetch failed", extra={"error": repr(exc)})
                    await pause(backoff_delay(self.settings.backoff, failures), self.stopping)
                    continue
                if failures and self.agent.stateful and await self._deliveries_in_limbo(msgs):
                    failures = 0
                    continue
                failures = 0
                self.metrics.batch_size.labels(self.service).observe(len(msgs))
                if not self.stopping.is_set():
                    self._ahead = self._fetch()
                await self.process(msgs)
        finally:
            await self._give_back_ahead()
        await self._release_prefetched()
        await self._quietly(self.sub.unsubscribe())

    async def _deliveries_in_limbo(self, msgs: Sequence[Msg]) -> bool:
        """After fetches failed (NATS away, or the consumer's leader lost in a cluster): whether JetStream holds
        deliveries this worker never got. They come back only after ack_wait, behind anything newer, and a
        stateful agent would then see a symbol's bars out of order. If so, give this batch back and wait them
        out, as at start-up (Service._await_unacked), so the redeliveries come first, in stream order."""
        try:
            info = await self.sub.consumer_info()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - cannot tell: go on as before
            log.warning("consumer info unavailable after the outage", extra={"error": repr(exc)})
            return False
        unaccounted = (info.num_ack_pending or 0) - len(msgs)
        if unaccounted <= 0:
            return False
        wait = self.settings.ack_wait + 0.5
        log.warning("after the outage JetStream holds deliveries this worker never got: waiting for them first",
                    extra={"unaccounted": unaccounted, "seconds": wait})
        for msg in msgs:
            await self._quietly(msg.nak())
        await pause(wait, self.stopping)
        return True

    def _fetch(self) -> asyncio.Task:
        return asyncio.create_task(self.sub.fetch(self.settings.batch_size, timeout=self.settings.fetch_timeout),
                                   name=f"{self.service}-fetch")

    def _fetched_ahead(self) -> list[Msg]:
        """The messages of the batch fetched ahead, once it has come (they need keeping alive too)."""
        ahead = self._ahead
        if ahead is None or not ahead.done() or ahead.cancelled() or ahead.exception() is not None:
            return []
        return ahead.result()

    async def _still_working(self, batch: list[tuple[Msg, Incoming]]) -> None:
        """Tell JetStream that the batch, and the batch fetched ahead, are in hand: not to redeliver them yet."""
        for msg in [msg for msg, _ in batch] + self._fetched_ahead():
            await self._quietly(msg.in_progress())

    async def _give_back_ahead(self) -> None:
        """Nak the batch fetched ahead: let its fetch end (within fetch_timeout), unless this task is
        being cancelled, in which case JetStream redelivers it after ack_wait."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        if asyncio.current_task().cancelling():
            ahead.cancel()
        try:
            msgs = await ahead
        except asyncio.CancelledError:
            if not ahead.cancelled():
                raise
            return
        except Exception:  # noqa: BLE001 - a failed or timed-out fetch holds nothing to give back
            return
        for msg in msgs:
            await self._quietly(msg.nak())

    async def _release_prefetched(self) -> None:
        queue = self.sub._sub._pending_queue if self.sub._sub else None  # noqa: SLF001 (no public API)
        while queue is not None and not queue.empty():
            msg = queue.get_nowait()
            if msg.headers and msg.headers.get("Status"):
                continue
            await self._quietly(msg.nak())

    @staticmethod
    async def _quietly(coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("ack/nak not sent", extra={"error": repr(exc)})

    # -- one batch -------------------------------------------------------------

    async def process(self, msgs: Sequence[Msg]) -> None:
        """Apply the processing contract to one fetched batch."""
        good: list[tuple[Msg, Incoming]] = []
        for stage, count in Counter(msg.subject.partition(".")[0] for msg in msgs).items():
            self.metrics.messages_in.labels(self.service, stage).inc(count)
        if self.tracking is not None:
            msgs = await self._not_held(msgs)
        for msg in msgs:
            md = msg.metadata
            try:
                incoming = decode(msg.subject, msg.data, msg.headers, stream_time=md.timestamp,
                                  sequence=md.sequence.stream, attempt=md.num_delivered,
                                  max_bytes=self.settings.max_body_bytes)
            except BadInput as err:
                await self._bad_input(msg, err)
                continue
            good.append((msg, incoming))
        for segment in self._segments(good):
            await self._process_with_retries(segment)

    async def _not_held(self, msgs: Sequence[Msg]) -> list[Msg]:
        """The messages the state does not hold yet; those it holds are done (delivered again after a
        consumer went back to an older position, or an ack that was lost): acked again, not handled."""
        tracking = self.tracking
        fresh = []
        for msg in msgs:
            if tracking.holds(msg.metadata.sequence.stream):
                self.metrics.duplicates.labels(self.service).inc()
                await self._quietly(msg.ack())
            else:
                fresh.append(msg)
        return fresh

    def _segments(self, good: list[tuple[Msg, Incoming]]) -> list[list[tuple[Msg, Incoming]]]:
        """The batch cut for crash safety, in stream order: runs of first deliveries together, each
        redelivered message alone (it may be what crashed the last run), and the message the last
        run crashed on (the suspect) alone at the end, so its neighbours are acked before it is tried."""
        suspect = [item for item in good if item[1].id == self.suspect]
        segments: list[list[tuple[Msg, Incoming]]] = []
        for item in good:
            if item[1].id == self.suspect:
                continue
            if item[1].envelope.attempt > 1 or not segments or segments[-1][-1][1].envelope.attempt > 1:
                segments.append([item])
            else:
                segments[-1].append(item)
        return segments + [[item] for item in suspect]

    def _mark_suspect(self, inc: Incoming | None) -> None:
        """Name the redelivered message about to be handled; if the process dies, the next run defers it."""
        if inc is None:
            self.suspect_file.unlink(missing_ok=True)
            return
        self.suspect_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.suspect_file.with_suffix(".partial")
        partial.write_text(inc.id)
        os.replace(partial, self.suspect_file)

    async def _process_with_retries(self, good: list[tuple[Msg, Incoming]]) -> None:
        redelivered = len(good) == 1 and good[0][1].envelope.attempt > 1
        if redelivered:
            self._mark_suspect(good[0][1])
        try:
            await self._retry_in_place(good)
        finally:
            if redelivered:
                self._mark_suspect(None)

    async def _retry_in_place(self, good: list[tuple[Msg, Incoming]]) -> None:
        attempt = 0
        while good:
            try:
                async with self._keep_alive(good):
                    await self._process_decoded(good)
                return
            except Transient as err:
                attempt += 1
                self.metrics.messages_failed.labels(self.service, "batch", err.reason).inc(len(good))
                log.warning("transient failure, retrying batch in place",
                            extra={"error": str(err), "attempt": attempt, "messages": len(good)})
                if self.stopping.is_set():
                    for msg, _ in good:
                        await self._quietly(msg.nak(delay=backoff_delay(self.settings.backoff, 1)))
                    return
                await self._still_working(good)
                # sleep well inside ack_wait, or JetStream redelivers what this worker still holds
                await pause(min(backoff_delay(self.settings.backoff, attempt), self.settings.ack_wait / 3), self.stopping)

    async def _process_decoded(self, batch: list[tuple[Msg, Incoming]]) -> None:
        started = time.perf_counter()
        started_ns = time.time_ns()
        traced: list[tuple[Incoming, int, int, str | None]] = []   # input, its outputs' slice, why it failed
        seen = await self._seen(batch)
        snapshot = self.agent.snapshot()
        prepare = getattr(self.agent, "prepare", None)
        if prepare is not None:
            await prepare([inc for _, inc in batch if inc.id not in seen])
        now = datetime.now(timezone.utc)
        cause_of = getattr(self.agent, "cause_of", None)
        done: list[tuple[Msg, Incoming]] = []
        failed: list[tuple[Msg, Incoming, BaseException]] = []
        outgoing: list[Outgoing] = []
        for position, (msg, inc) in enumerate(batch, 1):
            if not position % _YIELD_EVERY:   # let heartbeats, health checks and metrics in during a long batch
                await asyncio.sleep(0)
            if inc.id in seen:
                self.metrics.duplicates.labels(self.service).inc()
                await self._quietly(msg.ack())
                continue
            try:
                self._inject_faults(inc)
                events = self.agent.handle(inc, now)
            except BadInput as err:
                await self.dead_letter(msg, err.reason, str(err))
                if self.tracing is not None:
                    traced.append((inc, 0, 0, f"{err.reason}: {err}"))
                continue
            except Exception as exc:  # a bug or a bad day: retry later, DLQ at the last attempt
                failed.append((msg, inc, exc))
                continue
            replay_run = inc.headers.get(ce.REPLAY_RUN)
            if self.tracing is not None:
                traced.append((inc, len(outgoing), len(outgoing) + len(events), None))
            for index, event in enumerate(events):
                trace_id, causation_id = (cause_of and cause_of(event)) or (inc.envelope.trace_id, inc.id)
                out = envelope_out(event, service=self.service, event_id=ce.derive_id(self.service, inc.id, index),
                                   trace_id=trace_id, causation_id=causation_id, now=now)
                if replay_run:  # what a replayed event leads to is part of the replay
                    out.headers[ce.REPLAY_RUN] = replay_run
                outgoing.append(out)
            done.append((msg, inc))
        try:
            await self._record()  # effects durable before the outputs are visible
            await self.publisher.publish(outgoing)
            await self._mark([inc.id for _, inc in done])
        except Transient:
            self.agent.restore(snapshot)
            raise
        for stage, count in Counter(out.subject.partition(".")[0] for out in outgoing).items():
            self.metrics.messages_out.labels(self.service, stage).inc(count)
        if self.tracking is not None:
            self.tracking.add(inc.envelope.sequence for _, inc in done)
        for msg, _ in done:
            await self._quietly(msg.ack())
        for msg, inc, exc in failed:
            await self._retry_or_dead_letter(msg, inc, exc)
        if traced:
            self._spans(traced, outgoing, started_ns)
        elapsed = time.perf_counter() - started
        per_message = elapsed / max(1, len(batch))
        for stage, count in Counter(inc.envelope.subject.partition(".")[0] for _, inc in done).items():
            histogram = self.metrics.processing.labels(self.service, stage)
            for _ in range(count):
                histogram.observe(per_message)

    def _spans(self, traced: list[tuple[Incoming, int, int, str | None]], outgoing: list[Outgoing],
               started_ns: int) -> None:
        """One span per output, named after it, child of its input's span; a leaf for an input with none."""
        end_ns = time.time_ns()
        for inc, first, last, error in traced:
            parent = span_id_of(inc.headers.get(ce.TRACEPARENT))
            common = {"messaging.system": "nats", "tradeflow.service": self.service,
                      "tradeflow.input.subject": inc.envelope.subject, "tradeflow.input.id": inc.id}
            if first == last:
                self.tracing.hop(f"{self.service} {inc.envelope.subject.partition('.')[0]}", trace_id=inc.envelope.trace_id,
                                 span_id=ce.span_id(f"{self.service}:{inc.id}"), parent_span_id=parent,
                                 start_ns=started_ns, end_ns=end_ns, attributes=common, error=error)
            for out in outgoing[first:last]:
                event_id, cause = out.headers[ce.CE_ID], out.headers.get(ce.CE_CAUSATION)
                # an output may belong to an earlier input's journey (cause_of): its own trace, its own cause
                trace_id = ce.parse_traceparent(out.headers.get(ce.TRACEPARENT)) or inc.envelope.trace_id
                self.tracing.hop(f"{self.service} {out.subject.partition('.')[0]}", trace_id=trace_id,
                                 span_id=ce.span_id(event_id), start_ns=started_ns, end_ns=end_ns,
                                 parent_span_id=parent if cause in (None, inc.id) else ce.span_id(cause),
                                 attributes={**common, "messaging.destination.name": out.subject,
                                             "messaging.message.id": event_id})

    async def _seen(self, batch: list[tuple[Msg, Incoming]]) -> set[str]:
        """The batch's inputs the dedup registry says are done, for a stateless agent: while Redis is
        away, none (a repeat only re-publishes ids the stream drops). A stateful agent's tracking record
        has already said which of its inputs are done (`_not_held`): Redis is not asked."""
        if not self.uses_dedup or self.tracking is not None:
            return set()
        try:
            return await self.dedup.seen([inc.id for _, inc in batch])
        except RedisUnavailable:
            self.metrics.messages_failed.labels(self.service, "batch", "dedup_unavailable").inc(len(batch))
            return set()

    async def _mark(self, ids: list[str]) -> None:
        """Mark inputs done in Redis, with any left from an outage: what the next start's rebuild folds.
        While Redis is away keep them to mark later, unless the agent waits for Redis (`wait_for_dedup`,
        execution) or too many are waiting: then the batch is rolled back and retried until it is back."""
        if not self.uses_dedup:
            return
        pending = self.unmarked + ids if self.unmarked else ids
        try:
            await self.dedup.mark(pending)
        except RedisUnavailable:
            if self.agent.stateful and (self.waits_for_dedup or len(pending) > _MAX_UNMARKED):
                raise
            self.unmarked = pending
            return
        self.unmarked = []

    @contextlib.asynccontextmanager
    async def _keep_alive(self, batch: list[tuple[Msg, Incoming]]):
        """While a batch is worked on, tell JetStream every third of ack_wait that it is in progress,
        so slow work (a slow disk, a slow PubAck) is not redelivered to another worker meanwhile.
        A timer, not a task, until the first beat is due: most batches are done long before."""
        async def beat() -> None:
            while True:
                await self._still_working(batch)
                await asyncio.sleep(self.settings.ack_wait / 3)

        heart: list[asyncio.Task] = []
        timer = asyncio.get_running_loop().call_later(
            self.settings.ack_wait / 3, lambda: heart.append(asyncio.create_task(beat(), name="in-progress")))
        try:
            yield
        finally:
            timer.cancel()
            for task in heart:
                task.cancel()
            await asyncio.gather(*heart, return_exceptions=True)

    def _inject_faults(self, inc: Incoming) -> None:
        """TRADEFLOW_FAULT_FAIL_ON / _EXIT_ON (fault tests only): fail the handler, or end the process
        at once (as a crash would, nothing flushed), on a body that contains the text."""
        s = self.settings
        if s.fault_exit_on and s.fault_exit_on.encode() in inc.body:
            log.critical("fault injected: exiting", extra={"event_id": inc.id})
            os._exit(70)
        if s.fault_fail_on and s.fault_fail_on.encode() in inc.body:
            raise RuntimeError(f"fault injected on {inc.id}")

    async def _record(self) -> None:
        record = getattr(self.agent, "record", None)
        if record is None:
            return
        try:
            await record()
        except (Transient, asyncio.CancelledError):
            raise
        except Exception as exc:  # disk full, locked database: the batch is retried, nothing is acked
            raise EffectFailed(f"{self.service} could not record its effects: {exc!r}") from exc

    async def _bad_input(self, msg: Msg, err: BadInput) -> None:
        """Dead-letter undecodable input, unless the agent leaves that to the stage that consumes it."""
        if getattr(self.agent, "dead_letters", True):
            await self.dead_letter(msg, err.reason, str(err))
            return
        self.metrics.messages_failed.labels(self.service, msg.subject.partition(".")[0], err.reason).inc()
        log.info("bad input skipped", extra={"subject": msg.subject, "reason": err.reason, "error": str(err)[:200]})
        if self.tracking is not None:
            self.tracking.add((msg.metadata.sequence.stream,))
        await self._quietly(msg.term())

    async def _retry_or_dead_letter(self, msg: Msg, inc: Incoming, exc: BaseException) -> None:
        attempt = inc.envelope.attempt
        stage = inc.envelope.subject.partition(".")[0]
        self.metrics.messages_failed.labels(self.service, stage, "handler_error").inc()
        log.error("handler failed", extra={"event_id": inc.id, "subject": inc.envelope.subject,
                                            "attempt": attempt, "error": repr(exc)})
        if attempt >= self.settings.max_deliver:
            await self.dead_letter(msg, "max_deliveries", f"{type(exc).__name__}: {exc}")
        else:
            await self._quietly(msg.nak(delay=backoff_delay(self.settings.backoff, attempt)))

    async def dead_letter(self, msg: Msg, reason: str, error: str) -> None:
        """Copy `msg` to dlq.<service>.<subject> with why, await the PubAck, then term it."""
        md = msg.metadata
        out = dead_letter_copy(self.service, msg.subject, msg.data, msg.headers, seq=md.sequence.stream,
                               deliveries=md.num_delivered, reason=reason, error=error)
        attempt = 0
        while True:
            try:
                await self.publisher.publish([out])
                break
            except Transient as err:
                attempt += 1
                if self.stopping.is_set():
                    await self._quietly(msg.nak())
                    return
                log.warning("dead letter not stored yet, retrying", extra={"error": str(err)})
                await self._quietly(msg.in_progress())
                await pause(backoff_delay(self.settings.backoff, attempt), self.stopping)
        self.metrics.dead_letters.labels(self.service, reason).inc()
        log.warning("dead-lettered", extra={"subject": msg.subject, "reason": reason, "error": error[:200]})
        if self.tracking is not None:   # given up on: done, should it be delivered again
            self.tracking.add((md.sequence.stream,))
        await self._quietly(msg.term())
