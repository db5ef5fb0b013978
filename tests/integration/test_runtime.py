"""The runtime in-process against real servers: idempotent topology, retries then DLQ for a handler that fails."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig
from redis.asyncio import Redis

from contracts.codec import Incoming, encode
from contracts.deadletters import DLQ_DELIVERIES, DLQ_ERROR, DLQ_REASON
from contracts.events import BarReceived, OrderApproved, SignalGenerated
from contracts.subjects import PIPELINE_STREAM, PIPELINE_SUBJECTS
from services.runtime.agent import Agent, Options
from services.runtime.config import RuntimeSettings
from services.runtime.dedup import DedupRegistry
from services.runtime.metrics import Metrics
from services.runtime.publish import Publisher
from services.runtime.topology import consumed, consumer_config, ensure_consumer, ensure_streams
from services.runtime.tracking import Tracking
from services.runtime.worker import Worker
from tests.integration.conftest import DLQ_STREAM, stream_messages, wait_for

pytestmark = pytest.mark.integration


async def test_topology_is_idempotent_and_updates_what_drifted(make_stack):
    stack, nc = await make_stack(services=("quant",))
    jsm = nc.jsm()
    settings = RuntimeSettings(max_deliver=8)
    for _ in range(2):  # a second declaration (a restart, a replica) changes nothing and does not fail
        await ensure_streams(jsm, settings)
        await ensure_consumer(jsm, PIPELINE_STREAM, consumer_config("quant", ["signals_ready.>"], settings))
    assert (await jsm.consumer_info(PIPELINE_STREAM, "quant")).config.max_deliver == 8
    drifted = RuntimeSettings(max_deliver=3, stream_max_age=3600, ack_wait=12)
    await ensure_streams(jsm, drifted)
    await ensure_consumer(jsm, PIPELINE_STREAM, consumer_config("quant", ["signals_ready.>"], drifted))
    info = await jsm.consumer_info(PIPELINE_STREAM, "quant")
    assert (info.config.max_deliver, info.config.ack_wait) == (3, 12)
    assert (await jsm.stream_info(PIPELINE_STREAM)).config.max_age == 3600


async def test_a_consumer_of_the_whole_stream_has_no_filter_and_one_made_with_filters_loses_them(make_stack):
    """The recorder's durable, as an earlier version made it (the five stage filters), is updated to no
    filter; a service of two stages keeps its two."""
    stack, nc = await make_stack(services=())
    jsm, settings = nc.jsm(), RuntimeSettings()
    await ensure_streams(jsm, settings)
    await jsm.add_consumer(PIPELINE_STREAM, ConsumerConfig(durable_name="recorder", filter_subjects=PIPELINE_SUBJECTS,
                                                           ack_policy=AckPolicy.EXPLICIT))
    await ensure_consumer(jsm, PIPELINE_STREAM, consumer_config("recorder", list(PIPELINE_SUBJECTS), settings))
    config = (await jsm.consumer_info(PIPELINE_STREAM, "recorder")).config
    assert not config.filter_subject and not config.filter_subjects
    await ensure_consumer(jsm, PIPELINE_STREAM, consumer_config("two", ["signals_ready.>", "executed_ready.>"],
                                                                settings))
    assert (await jsm.consumer_info(PIPELINE_STREAM, "two")).config.filter_subjects == ["signals_ready.>",
                                                                                        "executed_ready.>"]


async def test_init_refuses_a_stream_someone_else_configured_and_changes_nothing(make_stack):
    """`tradeflow init` against a PIPELINE that holds someone else's subjects: one line naming the problem,
    exit 1, and nothing created or updated (the missing DLQ stays missing); once put right it declares all."""
    stack, nc = await make_stack(services=())
    jsm = nc.jsm()
    config = (await jsm.stream_info(PIPELINE_STREAM)).config
    config.subjects = [*config.subjects, "orders.>"]
    await jsm.update_stream(config)
    await jsm.delete_stream("DLQ")
    await jsm.delete_consumer(PIPELINE_STREAM, "risk")
    env = {**os.environ, "NATS_URL": stack.nats_url}
    run = subprocess.run([sys.executable, "-m", "services.cli", "init"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert run.returncode == 1, run.stderr
    [line] = run.stderr.strip().splitlines()
    assert "nothing changed" in line and "orders.>" in line
    assert "DLQ" not in [info.config.name for info in await jsm.streams_info()]
    assert "risk" not in [c.name for c in await jsm.consumers_info(PIPELINE_STREAM)]
    config.subjects = [s for s in config.subjects if s != "orders.>"]
    await jsm.update_stream(config)
    run = subprocess.run([sys.executable, "-m", "services.cli", "init"], capture_output=True, text=True, timeout=60,
                         env=env)
    assert run.returncode == 0, run.stderr
    assert "stream DLQ created" in run.stdout and "consumer PIPELINE/risk created" in run.stdout
    again = subprocess.run([sys.executable, "-m", "services.cli", "init"], capture_output=True, text=True, timeout=60,
                           env=env)
    assert again.returncode == 0 and "nothing changed" in again.stdout


class FlakyAgent(Agent):
    """Echoes signals as validated, except one symbol whose handler always raises."""

    name = "flaky"
    consumes = ("signals_ready.>",)

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def handle(self, incoming: Incoming, now: datetime):
        sig = incoming.event
        self.calls[sig.symbol] = self.calls.get(sig.symbol, 0) + 1
        if sig.symbol == "BOOM":
            raise RuntimeError("feature store returned garbage")
        return []


@contextlib.asynccontextmanager
async def running(stack, nc, agent, settings: RuntimeSettings, tracking: Tracking | None = None):
    """A Worker for `agent` on its own durable (what it consumes), in this process, stopped at the end."""
    jsm, js = nc.jsm(), nc.jetstream()
    await ensure_streams(jsm, settings)
    await ensure_consumer(jsm, PIPELINE_STREAM, consumer_config(agent.name, list(agent.consumes), settings))
    sub = await js.pull_subscribe_bind(durable=agent.name, stream=PIPELINE_STREAM)
    redis = Redis.from_url(stack.redis_url)
    worker = Worker(agent, sub, publisher=Publisher(js, timeout=5, window=64),
                    dedup=DedupRegistry(redis, agent.name, 60), metrics=Metrics(agent.name), settings=settings,
                    tracking=tracking)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stopping.set()
        await asyncio.wait_for(task, 10)
        await redis.aclose()


def signal_for(symbol: str) -> bytes:
    return encode(SignalGenerated(symbol=symbol, ts=datetime.fromisoformat("2024-01-02T14:30:00+00:00"),
                                  side="buy", strength=0.5, price=10.0, strategy="t"))


async def test_handler_error_is_retried_with_backoff_then_dead_lettered_with_the_error(make_stack, tmp_path):
    stack, nc = await make_stack(services=("quant",))
    settings = RuntimeSettings(max_deliver=3, backoff=[0.2, 0.4], fetch_timeout=0.3, data_dir=str(tmp_path))
    jsm, js = nc.jsm(), nc.jetstream()
    agent = FlakyAgent()
    async with running(stack, nc, agent, settings):
        for symbol in ("OK", "BOOM", "FINE"):
            await js.publish(f"signals_ready.{symbol}", signal_for(symbol))

        async def dead_lettered() -> bool:
            return (await jsm.stream_info(DLQ_STREAM)).state.messages == 1

        await wait_for(dead_lettered, timeout=20, what="the failing message in the DLQ")
        assert agent.calls == {"OK": 1, "BOOM": 3, "FINE": 1}  # retried up to max_deliver, neighbours once
        [letter] = await stream_messages(nc, DLQ_STREAM)
        assert letter.subject == "dlq.flaky.signals_ready.BOOM"
        assert letter.headers[DLQ_REASON] == "max_deliveries"
        assert letter.headers[DLQ_DELIVERIES] == "3"
        assert "RuntimeError: feature store returned garbage" in letter.headers[DLQ_ERROR]
        info = await jsm.consumer_info(PIPELINE_STREAM, "flaky")
        assert info.num_pending == 0 and info.num_ack_pending == 0


class Tally(FlakyAgent):
    """A stateful agent that counts what it handles."""

    name = "tally"
    options = Options(stateful=True)


async def test_a_stateful_worker_takes_what_its_state_holds_as_done_and_handles_the_rest(make_stack, tmp_path):
    """As after a kill -9 of nats-server, when the consumer delivers again, as first deliveries, inputs the
    state already holds: those are acked, not handled; one the state does not hold is handled even if
    Redis marks it done (the state is the authority on what it holds)."""
    stack, nc = await make_stack(services=())
    settings = RuntimeSettings(fetch_timeout=0.3, data_dir=str(tmp_path))
    jsm, js = nc.jsm(), nc.jetstream()
    await ensure_streams(jsm, settings)
    seqs = [(await js.publish(f"signals_ready.S{i}", signal_for(f"S{i}"), headers={"Nats-Msg-Id": f"sig-{i}"})).seq
            for i in range(1, 5)]
    redis = Redis.from_url(stack.redis_url)
    await DedupRegistry(redis, "tally", 60).mark(["sig-4"])
    await redis.aclose()
    agent = Tally()
    tracking = Tracking(floor=seqs[0], above=[seqs[2]])
    async with running(stack, nc, agent, settings, tracking) as worker:
        async def settled() -> bool:
            info = await jsm.consumer_info(PIPELINE_STREAM, "tally")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(settled, timeout=20, what="every input acked")
        assert agent.calls == {"S2": 1, "S4": 1}
        assert worker.metrics.duplicates.labels("tally")._value.get() == 2
        assert all(tracking.holds(seq) for seq in seqs)


class BarsAndSignals(Tally):
    """A stateful agent of two stages, bars among them, as risk, execution and audit are."""

    name = "two"
    consumes = ("data_ready.>", "signals_ready.>")

    def handle(self, incoming: Incoming, now: datetime):
        self.calls[incoming.envelope.subject] = self.calls.get(incoming.envelope.subject, 0) + 1
        return []


async def test_an_agent_that_takes_every_bar_reads_the_whole_stream_and_passes_over_the_other_stages(
        make_stack, tmp_path):
    """Its durable has no filter (a filtered consumer costs nats-server more with every symbol) and names
    what the agent takes in its metadata; the worker acks the other stages' events without handling,
    counting or dead-lettering them, and handles its own in stream order."""
    stack, nc = await make_stack(services=())
    settings = RuntimeSettings(fetch_timeout=0.3, data_dir=str(tmp_path))
    jsm, js = nc.jsm(), nc.jetstream()
    await ensure_streams(jsm, settings)
    ts = datetime.fromisoformat("2024-01-02T14:30:00+00:00")
    bar = encode(BarReceived(symbol="S", ts=ts, open=10.0, high=11.0, low=9.5, close=10.5, volume=100.0))
    order = encode(OrderApproved(symbol="S", ts=ts, order_id="o-1", side="buy", quantity=1.0, price=10.0))
    for subject, body in [("data_ready.S", bar), ("approved_ready.S", order), ("signals_ready.S", signal_for("S")),
                          ("approved_ready.S", b"not even json"), ("data_ready.S", bar)]:
        await js.publish(subject, body)
    agent = BarsAndSignals()
    async with running(stack, nc, agent, settings) as worker:
        async def settled() -> bool:
            info = await jsm.consumer_info(PIPELINE_STREAM, "two")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(settled, timeout=20, what="every event acked")
        config = (await jsm.consumer_info(PIPELINE_STREAM, "two")).config
        assert not config.filter_subject and not config.filter_subjects
        assert consumed(config) == ["data_ready.>", "signals_ready.>"]
        assert agent.calls == {"data_ready.S": 2, "signals_ready.S": 1}
        counted = {stage: worker.metrics.messages_in.labels("two", stage)._value.get()
                   for stage in ("data_ready", "signals_ready", "approved_ready")}
        assert counted == {"data_ready": 2, "signals_ready": 1, "approved_ready": 0}
        assert not [m for m in await stream_messages(nc, DLQ_STREAM) if m.subject.startswith("dlq.two.")]


class InOrder(Tally):
    """A stateful agent that keeps the order it handles its inputs in."""

    name = "inorder"

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def handle(self, incoming: Incoming, now: datetime):
        self.order.append(incoming.event.symbol)
        return super().handle(incoming, now)


async def test_deliveries_lost_on_the_way_are_handled_before_anything_newer(make_stack, tmp_path):
    """As when nats-server restarts quickly enough that a fetch only times out: a batch the server delivered
    never reaches the worker. JetStream redelivers it only after ack_wait; the worker sees the jump in the
    consumer's delivery numbers and waits for it, so the stateful agent still sees its inputs in stream order."""
    stack, nc = await make_stack(services=())
    settings = RuntimeSettings(ack_wait=2.0, fetch_timeout=0.3, batch_size=8, data_dir=str(tmp_path))
    js = nc.jetstream()
    agent = InOrder()
    async with running(stack, nc, agent, settings, Tracking()) as worker:
        real_fetch, dropped = worker.sub.fetch, []

        async def lossy_fetch(*args, **kwargs):   # the connection drops what one fetch delivered
            msgs = await real_fetch(*args, **kwargs)
            if not dropped and any(m.subject == "signals_ready.B" for m in msgs):
                dropped.extend(m.subject for m in msgs)
                raise NatsTimeout
            return msgs

        def handled(count: int):
            async def check() -> bool:
                return len(agent.order) >= count
            return check

        async def a_batch_dropped() -> bool:
            return bool(dropped)

        worker.sub.fetch = lossy_fetch
        await js.publish("signals_ready.A", signal_for("A"))
        await wait_for(handled(1), timeout=20, what="A handled")
        for symbol in ("B", "C"):
            await js.publish(f"signals_ready.{symbol}", signal_for(symbol))
        await wait_for(a_batch_dropped, timeout=20, what="a batch dropped on the way")
        for symbol in ("D", "E"):
            await js.publish(f"signals_ready.{symbol}", signal_for(symbol))
        await wait_for(handled(5), timeout=30, what="every input handled")
        assert agent.order == ["A", "B", "C", "D", "E"], f"dropped {dropped}"


class SlowRecorder(FlakyAgent):
    """Records each batch slowly (a slow disk): longer than ack_wait."""

    name = "slow"

    async def record(self) -> None:
        await asyncio.sleep(2.5)


async def test_slow_work_is_kept_alive_not_redelivered(make_stack, tmp_path):
    stack, nc = await make_stack(services=("quant",))
    settings = RuntimeSettings(ack_wait=1.0, fetch_timeout=0.3, data_dir=str(tmp_path))
    jsm = nc.jsm()
    agent = SlowRecorder()
    async with running(stack, nc, agent, settings):
        await nc.jetstream().publish("signals_ready.SLOW", signal_for("SLOW"))

        async def acked() -> bool:
            return (await jsm.consumer_info(PIPELINE_STREAM, "slow")).ack_floor.stream_seq >= 1

        await wait_for(acked, timeout=20, what="the slow batch to be acked")
        info = await jsm.consumer_info(PIPELINE_STREAM, "slow")
        assert info.delivered.consumer_seq == 1, "redelivered while it was being worked on"
        assert agent.calls == {"SLOW": 1}


async def test_dedup_marks_are_seen_for_the_ttl_across_days(any_redis):
    redis = any_redis   # one redis-server, then a Sentinel set's master
    registry = DedupRegistry(redis, "strategy", 2 * 86_400)
    day = datetime.fromisoformat("2026-03-01T23:59:00+00:00")
    await registry.mark([f"e{n}" for n in range(500)], now=day)
    await registry.mark(["late"], now=day + timedelta(days=1))
    ids = ["e0", "e499", "late", "never"]
    assert await registry.seen(ids, now=day) == {"e0", "e499"}
    assert await registry.seen(ids, now=day + timedelta(days=2)) == {"e0", "e499", "late"}
    assert await registry.seen(ids, now=day + timedelta(days=3)) == {"late"}   # past e*'s ttl: not asked
    assert await registry.seen([]) == set()
    ttl = await redis.ttl("tradeflow:done:{strategy}:20260301")
    assert 2 * 86_400 < ttl <= 2 * 86_400 + 60, "a day's marks live the ttl after that day ends"
