"""The processing contract, in one place: each fetched batch goes through five steps.

  decode  a stateful agent's inputs its tracking record holds are done: acked again, not handled
          (services/runtime/tracking.py); the rest are decoded, and bad input is dead-lettered
          (reason in headers) and termed;
  seen    a stateless agent asks the dedup registry which inputs are done;
  handle  the agent's handler, on each input in stream order (between its optional `prepare` and
          `record` hooks), gives the outputs;
  commit  the agent's effects are recorded, the outputs published and every PubAck awaited; an agent
          that waits for Redis (execution) marks a batch's inputs done before acking them if it had outputs;
  settle  the inputs are acked (and, for a stateful agent, added to its tracking record); a handler
          error naks with backoff and, at the last delivery, dead-letters the input with the error.
          The other agents' marks (what the next start's rebuild folds above the ack floor) are
          written after the acks, a batch of batches at a time (decisions.mark_before_ack says why
          that loses nothing).

A batch is cut into segments first (decisions.segments): a redelivered input alone, the one the last
run crashed on last. A Transient failure (NATS or Redis unreachable) in handle or commit rolls a
stateful agent back and retries the segment in place, keeping its messages (and their order) in
hand and telling JetStream they are in progress. The pure decisions are in decisions.py; every
use of nats-py's private attributes is in nats_internals.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from contracts import envelope as ce
from contracts.codec import Incoming, decode
from contracts.errors import BadInput, EffectFailed, Fatal, RedisUnavailable, Transient
from contracts.subjects import matcher, stage_of
from services.runtime import nats_internals
from services.runtime.agent import Agent, output_id, unwrap
from services.runtime.config import RuntimeSettings
from services.runtime.deadletters import dead_letter_copy
from services.runtime.decisions import (after_handler_error, backoff_delay, lost_deliveries, mark_before_ack,
                                        mark_failed, marks_due, segments, undelivered)
from services.runtime.dedup import DedupRegistry
from services.runtime.metrics import Metrics
from services.runtime.nats_internals import consumer_sequence, delivery
from services.runtime.pause import pause
from services.runtime.publish import Outgoing, Publisher, envelope_out
from services.runtime.tracing import Tracing
from services.runtime.tracking import Tracking

log = logging.getLogger(__name__)

__all__ = ["Worker", "backoff_delay"]

_YIELD_EVERY = 32          # messages handled between two turns of the event loop
_MAX_UNMARKED = 100_000    # marks kept in memory (Redis away) before a stateful agent waits for Redis
_MARK_INTERVAL = 0.05      # seconds marks written after their acks may wait, to go to Redis together

Item = tuple[Msg, Incoming]
Arrived = tuple[Msg, tuple[int, int, datetime]]   # a message and its delivery: stream sequence, attempt, stream time


class Outcome:
    """What handling a segment gave: the inputs done and their outputs, and what is left to settle."""

    __slots__ = ("done", "outgoing", "duplicates", "rejected", "failed", "traced", "snapshot", "started_ns")

    def __init__(self, snapshot: object) -> None:
        self.done: list[Item] = []                                 # handled: their outputs are in `outgoing`
        self.outgoing: list[Outgoing] = []
        self.duplicates: list[Msg] = []                            # done before (dedup registry): ack only
        self.rejected: list[tuple[Msg, BadInput]] = []             # the handler can never accept them: DLQ
        self.failed: list[tuple[Msg, Incoming, BaseException]] = []   # the handler raised: nak or DLQ
        self.traced: list[tuple[Incoming, int, int, str | None]] = []  # input, its outputs' slice, error
        self.snapshot = snapshot
        self.started_ns = time.time_ns()


class Worker:
    """Runs one agent over one pull subscription."""

    def __init__(self, agent: Agent, sub: JetStreamContext.PullSubscription, *, publisher: Publisher,
                 dedup: DedupRegistry, metrics: Metrics, settings: RuntimeSettings, consumer: str | None = None,
                 tracing: Tracing | None = None, tracking: Tracking | None = None,
                 reconnects: Callable[[], int] | None = None) -> None:
        """`tracking`: what the rebuilt state of a stateful agent holds (an empty record if not given);
        `reconnects`: how often the NATS connection was made again (its stats)."""
        self.agent = agent
        self.options = options = agent.options
        self.tracking = (tracking or Tracking()) if options.stateful else None
        self.tracing = tracing
        self.sub = sub
        self.fast_fetch = nats_internals.take_queued_first(sub)
        self.fast_headers = nats_internals.fast_headers()
        self.publisher = publisher
        self.dedup = dedup
        self.metrics = metrics
        self.settings = settings
        self.stopping = asyncio.Event()
        self.service = agent.name
        self._last_delivery: int | None = None            # the consumer's number for the last delivery that came
        self.reconnects = reconnects or (lambda: 0)        # how often the connection was made again
        self._reconnects_seen = self.reconnects()
        self._ahead: asyncio.Task | None = None           # the next batch's fetch, under way while one is processed
        self.uses_dedup = options.dedup                   # False: the agent's own effects are idempotent by id
        self.waits_for_dedup = options.wait_for_dedup
        self.linger = options.linger                      # off the trading path: let small batches fill
        self.takes = matcher(agent.consumes)               # its inputs; its durable may deliver more (stream_filters)
        self.unmarked: list[str] = []                      # acked, not yet marked (to write together, or later)
        self._marked_at = time.monotonic()
        self.naked: set[int] = set()                       # stream positions naked for a retry: gaps below the acks
        self._children: dict[tuple[int, str], object] = {}  # metric series by (family, stage)
        self._working: list[Item] | None = None           # the segment in hand, kept alive by _keep_alive
        self._working_since = 0.0
        self.suspect_file = Path(settings.data_dir) / (consumer or self.service) / "suspect"   # one per replica
        self.suspect = self.suspect_file.read_text().strip() if self.suspect_file.is_file() else None
        if self.suspect:
            log.warning("the last run ended while handling a message: it is tried last, alone",
                        extra={"event_id": self.suspect})

    # -- the fetch loop --------------------------------------------------------

    async def run(self) -> None:
        """Fetch and process batches until `stopping` is set; then nak what was fetched but not begun.

        The next batch is fetched while this one is worked on (one fetch ahead, kept alive with it),
        so a service does not wait for its messages between batches; batches are still processed,
        and acked, one after the other, in stream order. An agent that lingers (off the trading path)
        fetches nothing ahead and, after a small batch, lets the next one fill for `linger` seconds.
        """
        failures = 0
        beat = asyncio.create_task(self._keep_alive(), name=f"{self.service}-in-progress")
        try:
            while not self.stopping.is_set():
                fetching, self._ahead = self._ahead or self._fetch(), None
                try:
                    msgs = await fetching
                except (NatsTimeout, asyncio.TimeoutError):
                    await self._write_kept_marks()   # idle: what waits goes to Redis now
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - disconnected, closed, server error: wait and go on
                    failures += 1
                    log.warning("fetch failed", extra={"error": repr(exc)})
                    await pause(backoff_delay(self.settings.backoff, failures), self.stopping)
                    continue
                lost = self._lost_on_the_way(msgs) if self.options.stateful else 0
                reconnected = self._reconnected()
                stateful = self.options.stateful
                if (failures or lost or reconnected) and stateful and await self._deliveries_in_limbo(msgs):
                    failures = 0
                    continue
                failures = 0
                self.metrics.batch_size.labels(self.service).observe(len(msgs))
                if not self.stopping.is_set() and not self.linger:
                    self._ahead = self._fetch()
                await self.process(msgs)
                if self.linger and len(msgs) < self.settings.batch_size:
                    await pause(self.linger, self.stopping)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            await self._give_back_ahead()
            await self._write_kept_marks()
        for msg in nats_internals.queued(self.sub):
            await self._quietly(msg.nak())
        await self._quietly(self.sub.unsubscribe())

    def _reconnected(self) -> bool:
        """Whether the connection was made again since the last batch: what the last one delivered may be
        gone with it, whatever the delivery numbers say (a restarted nats-server numbers from its own state)."""
        count = self.reconnects()
        if count == self._reconnects_seen:
            return False
        self._reconnects_seen = count
        return True

    def _lost_on_the_way(self, msgs: Sequence[Msg]) -> int:
        """How many deliveries came before this batch's that never reached this worker: a nats-server restart
        quick enough that the fetch only timed out, or a consumer leader lost with them in a cluster."""
        if not msgs:
            return 0
        first, final = consumer_sequence(msgs[0].reply), consumer_sequence(msgs[-1].reply)
        if final - first + 1 == len(msgs):   # one after the other, as one request's deliveries are numbered
            lost, _ = lost_deliveries(self._last_delivery, [first])
            self._last_delivery = final
        else:
            lost, self._last_delivery = lost_deliveries(self._last_delivery,
                                                        [consumer_sequence(msg.reply) for msg in msgs])
        if lost:
            log.warning("deliveries never reached this worker", extra={"lost": lost})
        return lost

    async def _deliveries_in_limbo(self, msgs: Sequence[Msg]) -> bool:
        """After fetches failed (NATS away, or the consumer's leader lost in a cluster), a reconnection, or
        deliveries lost on the way: whether JetStream holds deliveries this worker never got. They come back
        only after ack_wait, and a stateful agent would see a symbol's bars out of order if it handled anything
        newer first. If so, let go of this batch and of what the last request still brings, unanswered, and
        wait until all of it has run out of ack_wait too: JetStream then redelivers it all in the order it was
        delivered, the lost ones first, before anything new. (A nak would put the batch ahead of the lost ones,
        and a nak with a delay lets new messages in before it.)"""
        try:
            info = await self.sub.consumer_info()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - cannot tell: go on as before
            log.warning("consumer info unavailable after the outage", extra={"error": repr(exc)})
            return False
        unaccounted = undelivered(info.num_ack_pending or 0, len(msgs))
        if not unaccounted:
            return False
        wait = self.settings.ack_wait + self.settings.fetch_timeout + 0.5
        log.warning("after the outage JetStream holds deliveries this worker never got: waiting for them first",
                    extra={"unaccounted": unaccounted, "seconds": wait})
        await pause(wait, self.stopping)
        let_go = nats_internals.queued(self.sub)   # delivered to the last request meanwhile: they run out too
        _, self._last_delivery = lost_deliveries(self._last_delivery, [consumer_sequence(m.reply) for m in let_go])
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

    async def _give_back_ahead(self) -> None:
        """Nak the batch fetched ahead: let its fetch end (within fetch_timeout), unless this task is
        being cancelled, in which case JetStream redelivers it after ack_wait."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        task = asyncio.current_task()
        if task is not None and task.cancelling():
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

    @staticmethod
    async def _quietly(coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a lost ack is redelivered, and handled as a repeat
            log.warning("ack/nak not sent", extra={"error": repr(exc)})

    # -- one batch: decode -> seen -> handle -> commit -> settle ----------------

    async def process(self, msgs: Sequence[Msg]) -> None:
        """Apply the processing contract to one fetched batch."""
        takes = self.takes
        if not all(takes(msg.subject) for msg in msgs):
            msgs = await self._pass_over(msgs)
        self._count(self.metrics.messages_in, (msg.subject for msg in msgs))
        arrived = await self._once_each([(msg, delivery(msg.reply)) for msg in msgs])
        decoded = await self._decode(await self._not_held(arrived) if self.tracking is not None else arrived)
        for segment in segments(decoded, attempt=lambda item: item[1].envelope.attempt,
                                ident=lambda item: item[1].id, suspect=self.suspect):
            await self._process_segment(segment)

    async def _pass_over(self, msgs: Sequence[Msg]) -> list[Msg]:
        """The batch's inputs; the other stages' events (an agent that takes every bar has a durable without
        filters, topology.stream_filters) are acked, and are not handled or counted."""
        takes, mine = self.takes, []
        for msg in msgs:
            if takes(msg.subject):
                mine.append(msg)
            else:
                await self._quietly(msg.ack())
        return mine

    async def _once_each(self, arrived: list[Arrived]) -> list[Arrived]:
        """One delivery of each stream sequence in a batch, in its first place: a message can come twice in
        one fetch (a late answer to a pull given up on, then its redelivery after ack_wait, as after a network
        cut). The newest delivery is the one handled; the others are acked as duplicates, so a state folds
        the input once."""
        if len({seq for _, (seq, _a, _t) in arrived}) == len(arrived):
            return arrived
        kept: list[Arrived] = []
        place: dict[int, int] = {}
        for item in arrived:
            seq, attempt = item[1][0], item[1][1]
            if seq not in place:
                place[seq] = len(kept)
                kept.append(item)
                continue
            older = kept[place[seq]]
            if attempt >= older[1][1]:
                kept[place[seq]], item = item, older
            self.metrics.duplicates.labels(self.service).inc()
            await self._quietly(item[0].ack())
        return kept

    async def _not_held(self, arrived: list[Arrived]) -> list[Arrived]:
        """The messages the state does not hold yet; those it holds are done (delivered again after a
        consumer went back to an older position, or an ack that was lost): acked again, not handled."""
        assert self.tracking is not None   # a stateful agent's
        holds = self.tracking.holds
        fresh = []
        for msg, (seq, attempt, at) in arrived:
            if holds(seq):
                self.metrics.duplicates.labels(self.service).inc()
                await self._quietly(msg.ack())
            else:
                fresh.append((msg, (seq, attempt, at)))
        return fresh

    async def _decode(self, arrived: Iterable[Arrived]) -> list[Item]:
        """Decode each message; bad input is dead-lettered (or termed) here and goes no further."""
        good: list[Item] = []
        max_bytes = self.settings.max_body_bytes
        for msg, (seq, attempt, at) in arrived:
            try:
                incoming = decode(msg.subject, msg.data, msg.headers, stream_time=at, sequence=seq, attempt=attempt,
                                  max_bytes=max_bytes)
            except BadInput as err:
                await self._bad_input(msg, err)
                continue
            good.append((msg, incoming))
        return good

    async def _process_segment(self, segment: list[Item]) -> None:
        """Handle, commit and settle one segment, retrying it in place through Transient failures; a
        redelivered input is named the suspect while it is tried (the next run defers it if this one dies)."""
        redelivered = len(segment) == 1 and segment[0][1].envelope.attempt > 1
        if redelivered:
            self._mark_suspect(segment[0][1])
        self._working, self._working_since = segment, time.monotonic()
        try:
            outcome = await self._until_committed(segment)
            if outcome is not None:
                await self._settle(outcome)
        finally:
            self._working = None
            if redelivered:
                self._mark_suspect(None)

    async def _keep_alive(self) -> None:
        """Tell JetStream, every third of ack_wait, that the segment being worked on is still in progress, so
        slow work (a slow disk, a slow PubAck, a retry in place) is not redelivered meanwhile. One task for the
        worker's life: a segment costs nothing here until it has taken a third of ack_wait."""
        third = self.settings.ack_wait / 3
        while True:
            await asyncio.sleep(third / 2)
            segment = self._working
            if segment is not None and time.monotonic() - self._working_since >= third:
                self._working_since = time.monotonic()
                await self._still_working(segment)

    async def _until_committed(self, segment: list[Item]) -> Outcome | None:
        """Handle and commit the segment, again after each Transient failure; None if the service stops
        meanwhile (the segment is naked)."""
        attempt = 0
        while True:
            try:
                outcome = await self._handle(segment)
                await self._commit(outcome)
                return outcome
            except Transient as err:
                attempt += 1
                self.metrics.messages_failed.labels(self.service, "batch", err.reason).inc(len(segment))
                log.warning("transient failure, retrying batch in place",
                            extra={"error": str(err), "attempt": attempt, "messages": len(segment)})
                if self.stopping.is_set():
                    for msg, _ in segment:
                        await self._quietly(msg.nak(delay=backoff_delay(self.settings.backoff, 1)))
                    return None
                await self._still_working(segment)
                # sleep well inside ack_wait, or JetStream redelivers what this worker still holds
                await pause(min(backoff_delay(self.settings.backoff, attempt), self.settings.ack_wait / 3),
                            self.stopping)

    async def _seen(self, segment: list[Item]) -> set[str]:
        """The inputs the dedup registry says are done, for a stateless agent: while Redis is away, none
        (a repeat only re-publishes ids the stream drops). A stateful agent's tracking record has already
        said which of its inputs are done (`_not_held`): Redis is not asked."""
        if not self.uses_dedup or self.tracking is not None:
            return set()
        try:
            return await self.dedup.seen([inc.id for _, inc in segment])
        except RedisUnavailable:
            self.metrics.messages_failed.labels(self.service, "batch", "dedup_unavailable").inc(len(segment))
            return set()

    async def _handle(self, segment: list[Item]) -> Outcome:
        """Run the agent's handler on each input not seen before; the state as it was is kept to roll back to.
        All or nothing: when the handler fails on an input, a stateful agent's state is put back and the
        segment handled again without it, so no input leaves half its changes behind."""
        seen = await self._seen(segment)
        agent = self.agent
        snapshot = agent.snapshot()
        await agent.prepare([inc for _, inc in segment if inc.id not in seen] if seen else [inc for _, inc in segment])
        now = datetime.now(timezone.utc)
        failed: dict[int, BaseException] = {}
        while True:
            outcome = Outcome(snapshot)
            if await self._handle_each(segment, seen, failed, outcome, now) or not self.options.stateful:
                return outcome
            agent.restore(snapshot)

    async def _handle_each(self, segment: list[Item], seen: set[str], failed: dict[int, BaseException],
                           outcome: Outcome, now: datetime) -> bool:
        """One pass of the handler over the segment, the inputs in `failed` left out; False when it failed
        on another (added to `failed`), for a stateful agent, whose pass ends there."""
        agent, service, tracing, stateful = self.agent, self.service, self.tracing, self.options.stateful
        outgoing = outcome.outgoing
        for position, (msg, inc) in enumerate(segment, 1):
            if not position % _YIELD_EVERY:   # let heartbeats, health checks and metrics in during a long batch
                await asyncio.sleep(0)
            if seen and inc.id in seen:
                outcome.duplicates.append(msg)
                continue
            if position in failed:
                outcome.failed.append((msg, inc, failed[position]))
                continue
            try:
                self._inject_faults(inc)
                events = agent.handle(inc, now)
            except BadInput as err:   # the handler judged it: what it changed stands
                outcome.rejected.append((msg, err))
                if tracing is not None:
                    outcome.traced.append((inc, 0, 0, f"{err.reason}: {err}"))
                continue
            except Exception as exc:  # noqa: BLE001 - a bug or a bad day: retry later, DLQ at the last attempt
                failed[position] = exc
                if stateful:
                    return False
                outcome.failed.append((msg, inc, exc))
                continue
            if tracing is not None:
                outcome.traced.append((inc, len(outgoing), len(outgoing) + len(events), None))
            replay_run = inc.headers.get(ce.REPLAY_RUN)
            for index, output in enumerate(events):
                event, cause = unwrap(output)
                trace_id, causation_id = cause or (inc.envelope.trace_id, inc.id)
                out = envelope_out(event, service=service, event_id=output_id(service, inc.id, index, output),
                                   trace_id=trace_id, causation_id=causation_id, now=now)
                if replay_run:  # what a replayed event leads to is part of the replay
                    out.headers[ce.REPLAY_RUN] = replay_run
                outgoing.append(out)
            outcome.done.append((msg, inc))
        return True

    async def _commit(self, outcome: Outcome) -> None:
        """Make the segment durable: the agent's effects, then the outputs (every PubAck), then, for an agent
        that waits for Redis or while there is a gap below, the marks. Rolls the state back on a Transient."""
        try:
            await self._record()  # effects durable before the outputs are visible
            await self.publisher.publish(outcome.outgoing)
            if self.uses_dedup and self._marks_first(outcome):
                await self._write_marks([inc.id for _, inc in outcome.done])
        except Transient:
            self.agent.restore(outcome.snapshot)
            raise

    def _marks_first(self, outcome: Outcome) -> bool:
        return mark_before_ack(stateful=self.options.stateful, waits_for_dedup=self.waits_for_dedup,
                               outputs=bool(outcome.outgoing), gap_below=bool(self.naked), kept=len(self.unmarked),
                               limit=_MAX_UNMARKED)

    async def _settle(self, outcome: Outcome) -> None:
        """Ack what is done (after adding it to the tracking record), then dead-letter what the handler
        rejected, nak or dead-letter what it failed on, and write the marks that wait."""
        done = outcome.done
        if self.tracking is not None:
            self.tracking.add(inc.envelope.sequence for _, inc in done)
        naked = self.naked
        for msg, inc in done:
            if naked:
                naked.discard(inc.envelope.sequence)
            await self._quietly(msg.ack())
        if outcome.duplicates:
            self.metrics.duplicates.labels(self.service).inc(len(outcome.duplicates))
            for msg in outcome.duplicates:
                await self._quietly(msg.ack())
        for msg, err in outcome.rejected:
            await self.dead_letter(msg, err.reason, str(err))
        for msg, inc, exc in outcome.failed:
            await self._retry_or_dead_letter(msg, inc, exc)
        if self.uses_dedup and done and not self._marks_first(outcome):
            self.unmarked += [inc.id for _, inc in done]
            if marks_due(len(self.unmarked), since_flush=time.monotonic() - self._marked_at,
                         interval=_MARK_INTERVAL, batch=self.settings.batch_size):
                await self._write_kept_marks()
        self._observe(outcome)

    def _observe(self, outcome: Outcome) -> None:
        """Metrics (per stage, counted once a segment) and, when tracing is on, the spans."""
        self._count(self.metrics.messages_out, (out.subject for out in outcome.outgoing))
        if outcome.traced:
            self._spans(outcome.traced, outcome.outgoing, outcome.started_ns)
        if not outcome.done:
            return
        per_message = (time.time_ns() - outcome.started_ns) / 1e9 / len(outcome.done)
        for stage, count in _by_stage(inc.envelope.subject for _, inc in outcome.done).items():
            histogram = self._child(self.metrics.processing, stage)
            for _ in range(count):
                histogram.observe(per_message)

    def _count(self, family, subjects: Iterable[str]) -> None:
        for stage, count in _by_stage(subjects).items():
            self._child(family, stage).inc(count)

    def _child(self, family, stage: str):
        """The family's (service, stage) series, looked up once (`labels()` takes a lock and builds a tuple)."""
        key = (id(family), stage)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(self.service, stage)
        return child

    # -- the steps' parts ------------------------------------------------------

    async def _write_marks(self, ids: Sequence[str] = ()) -> None:
        """Mark `ids`, and any marks kept, done in Redis. While Redis is away keep them to write later, or
        raise (the batch is rolled back and retried) if decisions.mark_failed says to wait for Redis."""
        pending = self.unmarked + list(ids) if self.unmarked else list(ids)
        if not pending:
            return
        try:
            await self.dedup.mark(pending)
        except RedisUnavailable:
            if mark_failed(stateful=self.options.stateful, waits_for_dedup=self.waits_for_dedup,
                           pending=len(pending), limit=_MAX_UNMARKED) == "retry":
                raise
            self.unmarked = pending
            return
        self.unmarked = []
        self._marked_at = time.monotonic()

    async def _write_kept_marks(self) -> None:
        """Write the marks kept after their acks; if Redis is away they wait for the next try."""
        if not self.unmarked:
            return
        try:
            await self._write_marks()
        except RedisUnavailable:   # too many kept: the next batch writes them before its acks, or waits
            pass

    async def _still_working(self, batch: list[Item]) -> None:
        """Tell JetStream that the batch, and the batch fetched ahead, are in hand: not to redeliver them yet."""
        for msg in [msg for msg, _ in batch] + self._fetched_ahead():
            await self._quietly(msg.in_progress())

    def _mark_suspect(self, inc: Incoming | None) -> None:
        """Name the redelivered message about to be handled; if the process dies, the next run defers it."""
        if inc is None:
            self.suspect_file.unlink(missing_ok=True)
            return
        self.suspect_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.suspect_file.with_suffix(".partial")
        partial.write_text(inc.id)
        os.replace(partial, self.suspect_file)

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
        try:
            await self.agent.record()
        except (Transient, Fatal, asyncio.CancelledError):
            raise
        except Exception as exc:  # disk full, locked database: the batch is retried, nothing is acked
            raise EffectFailed(f"{self.service} could not record its effects: {exc!r}") from exc

    def _spans(self, traced: list[tuple[Incoming, int, int, str | None]], outgoing: list[Outgoing],
               started_ns: int) -> None:
        """One span per output, named after it, child of its input's span; a leaf for an input with none."""
        end_ns = time.time_ns()
        tracing = self.tracing
        assert tracing is not None   # spans are kept only when tracing is on
        for inc, first, last, error in traced:
            context = ce.parse_traceparent(inc.headers.get(ce.TRACEPARENT) or inc.headers.get(ce.CE_TRACEPARENT))
            parent = context.parent_id if context else None
            common = {"tradeflow.service": self.service,
                      "tradeflow.input.subject": inc.envelope.subject, "tradeflow.input.id": inc.id}
            if first == last:
                tracing.hop("process", inc.envelope.subject, message_id=inc.id, trace_id=inc.envelope.trace_id,
                            span_id=ce.span_id(f"{self.service}:{inc.id}"), parent_span_id=parent,
                            start_ns=started_ns, end_ns=end_ns, attributes=common, error=error)
            for out in outgoing[first:last]:
                event_id, cause = out.headers[ce.CE_ID], out.headers.get(ce.CE_CAUSATION)
                # an output may belong to an earlier input's journey (Output.cause): its own trace, its own cause
                own = ce.parse_traceparent(out.headers.get(ce.TRACEPARENT))
                trace_id = own.trace_id if own else inc.envelope.trace_id
                tracing.hop("publish", out.subject, message_id=event_id, trace_id=trace_id,
                            span_id=ce.span_id(event_id), start_ns=started_ns, end_ns=end_ns,
                            parent_span_id=parent if cause in (None, inc.id) else ce.span_id(cause),
                            attributes=common)

    # -- settling what is not done ----------------------------------------------

    async def _bad_input(self, msg: Msg, err: BadInput) -> None:
        """Dead-letter undecodable input, unless the agent leaves that to the stage that consumes it."""
        if self.options.dead_letters:
            await self.dead_letter(msg, err.reason, str(err))
            return
        self.metrics.messages_failed.labels(self.service, stage_of(msg.subject), err.reason).inc()
        log.info("bad input skipped", extra={"subject": msg.subject, "reason": err.reason, "error": str(err)[:200]})
        self._given_up(msg.metadata.sequence.stream)
        await self._quietly(msg.term())

    async def _retry_or_dead_letter(self, msg: Msg, inc: Incoming, exc: BaseException) -> None:
        attempt = inc.envelope.attempt
        self.metrics.messages_failed.labels(self.service, stage_of(inc.envelope.subject), "handler_error").inc()
        log.error("handler failed", extra={"event_id": inc.id, "subject": inc.envelope.subject,
                                            "attempt": attempt, "error": repr(exc)})
        action, delay = after_handler_error(attempt, self.settings.max_deliver, self.settings.backoff)
        if action == "dead_letter":
            await self.dead_letter(msg, "max_deliveries", f"{type(exc).__name__}: {exc}")
            return
        if self.options.stateful:   # a gap below what is acked next: marks go first until it closes
            self.naked.add(inc.envelope.sequence)
        await self._quietly(msg.nak(delay=delay))

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
        self._given_up(md.sequence.stream)
        await self._quietly(msg.term())

    def _given_up(self, seq: int) -> None:
        """A dead-lettered or termed input is done: in the tracking record, no longer a gap."""
        self.naked.discard(seq)
        if self.tracking is not None:   # should it be delivered again
            self.tracking.add((seq,))


def _by_stage(subjects: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for subject in subjects:
        stage = stage_of(subject)
        counts[stage] = counts.get(stage, 0) + 1
    return counts
