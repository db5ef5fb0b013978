"""The bad day, on purpose: each test runs ~2,700 events through every service as a separate process,
injects a fault mid-stream, and checks that no acknowledged event was lost, no order was filled twice,
and every event is in the store or the DLQ (see harness.run_fault)."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime, timezone

import orjson
import psutil
import pytest

from contracts.codec import decode
from contracts.deadletters import DLQ_REASON, DLQ_SUBJECT
from contracts.errors import BadInput
from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM, stage_of
from services import registry
from services.ops.supervisor import http_json, wait_port
from tests.chaos.conftest import Compound
from tests.chaos.harness import DATA, ENV, kill_plan, run_fault
from tests.integration.conftest import stream_messages, wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.faults]   # recovery figures: the machine alone

IN_TURN = ("strategy", "quant", "risk", "execution", "audit", "recorder", "data")
ENV_GRACE = 10.0   # the supervisor's grace period (and the services' drain timeout)


async def mid_stream(stack, nc, done: int = 300) -> None:
    """Wait until the audit service has handled some events, so the fault lands mid-stream."""
    async def started() -> bool:
        return (await nc.jsm().consumer_info(PIPELINE_STREAM, "audit")).ack_floor.stream_seq > done

    await wait_for(started, timeout=60, what="the pipeline to be under way")


async def still_feeding(stack) -> bool:
    return not (await http_json(stack.http_port("data"), "/v1/progress"))[1].get("done")


async def test_kill_9_of_each_service_in_turn(make_stack):
    """Also: none of a killed service's processes (its compute pool's forkserver and workers) is left 10 s on."""
    left_behind: list[psutil.Process] = []

    async def fault(stack, nc) -> str:
        await mid_stream(stack, nc)
        for name in IN_TURN:   # data last: it is asked whether it is still feeding first
            if name == "data":
                assert await still_feeding(stack), "the faults did not land mid-stream"
            left_behind.extend(psutil.Process(stack.supervisor.procs[name].pid).children(recursive=True))
            assert await stack.restart_service(name, signal.SIGKILL, wait=False) == -signal.SIGKILL
            await asyncio.sleep(0.4)
        return f"{len(IN_TURN)} services killed 0.4 s apart"

    await run_fault(make_stack, "kill -9 of each service in turn", fault)
    assert left_behind, "no service had a process of its own to check"
    _, alive = psutil.wait_procs(left_behind, timeout=10)
    assert not alive, f"left behind by a kill -9 of their service: {[p.cmdline()[:3] for p in alive]}"


async def test_sigterm_of_each_service_in_turn(make_stack):
    async def fault(stack, nc) -> str:
        await mid_stream(stack, nc)
        slowest = 0.0
        assert await still_feeding(stack)
        for name in ("data", *IN_TURN[:-1]):   # data first, while it is still feeding
            started = time.monotonic()
            assert await stack.restart_service(name, signal.SIGTERM, wait=False) == 0, f"{name} did not exit 0"
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < ENV_GRACE, f"a service took {slowest:.1f}s to drain"
        return f"slowest drain {slowest:.1f}s"

    figures = await run_fault(make_stack, "SIGTERM of each service in turn", fault)
    assert figures.lost == 0


async def test_nats_server_kill_9_and_restart_on_its_store(make_stack):
    async def fault(stack, nc) -> str:
        await mid_stream(stack, nc)
        killed = time.monotonic()
        await stack.supervisor.restart("nats-server", signal.SIGKILL)
        await wait_port("127.0.0.1", int(stack.nats_url.rsplit(":", 1)[1]), 20)
        assert await still_feeding(stack), "the outage did not land mid-stream"
        return f"down {time.monotonic() - killed:.1f}s"

    await run_fault(make_stack, "kill -9 of nats-server, restart on its store", fault)


async def test_redis_away_for_30_seconds(make_stack):
    async def fault(stack, nc) -> str:
        await mid_stream(stack, nc)
        jsm = nc.jsm()
        before = (await jsm.consumer_info(PIPELINE_STREAM, "strategy")).ack_floor.stream_seq
        await stack.supervisor.stop("redis-server")
        await asyncio.sleep(30)
        during = (await jsm.consumer_info(PIPELINE_STREAM, "strategy")).ack_floor.stream_seq - before
        await stack.supervisor.start(stack.supervisor.procs["redis-server"])
        assert during > 0, "the stages stopped while Redis was away"
        return f"strategy went {during:,} stream seqs on while Redis was away"

    await run_fault(make_stack, "Redis away for 30 s", fault)


async def test_redis_restarted_empty_and_the_last_events_redelivered(make_stack):
    async def fault(stack, nc) -> str:
        await mid_stream(stack, nc)
        await stack.supervisor.stop("redis-server", signal.SIGKILL)
        for leftover in (stack.home / "redis").iterdir():   # every dedup key gone
            if leftover.is_dir():
                for f in leftover.iterdir():
                    f.unlink()
                leftover.rmdir()
            else:
                leftover.unlink()
        await stack.supervisor.start(stack.supervisor.procs["redis-server"])
        for name in ("risk", "execution", "audit"):   # what they hold unacked comes again
            await stack.restart_service(name, signal.SIGKILL, wait=False)
        return "dedup keys lost; risk, execution, audit killed"

    await run_fault(make_stack, "Redis restarted empty, last events redelivered", fault)


def poison() -> list[tuple[str, bytes]]:
    """One message of every bad-input kind, on every stage, for a symbol of its own."""
    bar = {"symbol": "POISON", "ts": "2024-01-02T14:30:00Z", "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
           "volume": 10}
    kinds = [b'{"symbol": "POISON", "ts": ', b"", b"\xff\xfe\x00garbage", b"[1, 2, 3]",
             orjson.dumps(bar | {"open": "abc"}), orjson.dumps(bar | {"foo": 1}), orjson.dumps(bar | {"open": -1}),
             orjson.dumps(bar | {"high": 0.1}), orjson.dumps(bar | {"ts": "2024-01-02T14:30:00"}),
             orjson.dumps(bar | {"symbol": "OTHER"}), orjson.dumps(bar | {"pad": "x" * 70_000}), b"NaN"]
    stages = ["data_ready", "signals_ready", "validated_ready", "approved_ready", "executed_ready"]
    return [(f"{stage}.POISON", body) for stage in stages for body in kinds]


def consumers_of(subject: str) -> int:
    stage = stage_of(subject)
    agents = [registry.build(name, ENV) for name in registry.CONSUMERS]
    return sum(any(stage_of(p) == stage for p in agent.consumes) for agent in agents)


async def test_poison_of_every_kind_mixed_into_the_stream(make_stack):
    bad = poison()
    for subject, body in bad:   # each really is bad input
        with pytest.raises(BadInput):
            decode(subject, body)
    expected_dead = sum(consumers_of(subject) for subject, _ in bad)

    async def fault(stack, nc) -> str:
        await mid_stream(stack, nc, done=100)
        for subject, body in bad:
            await nc.publish(subject, body)
            await asyncio.sleep(0.03)
        await nc.flush()
        assert await still_feeding(stack), "the poison did not land mid-stream"
        return f"{len(bad)} poison messages ({len(bad) // 5} kinds on 5 stages)"

    async def right_reasons(stack, nc) -> None:
        for letter in await stream_messages(nc, DLQ_STREAM):
            subject = letter.headers[DLQ_SUBJECT]
            with pytest.raises(BadInput) as why:
                decode(subject, letter.data)
            assert letter.headers[DLQ_REASON] == why.value.reason, (subject, letter.data[:60])

    await run_fault(make_stack, "poison of every kind, ~2 % of the stream", fault, expected_dead=expected_dead,
                    after=right_reasons)


COMPOUND_TARGETS = (*IN_TURN, "nats-server", "redis-server")


async def test_compound_faults_services_nats_and_redis_killed_in_one_run(make_stack, compound: Compound):
    """SIGKILLs at random among the services, nats-server and redis-server in one run, each restarted by
    the supervisor (as under `tradeflow up`), while a paced feed runs; then every account settled."""
    data = DATA | {"TRADEFLOW_DATA_SYMBOLS": "AAPL,MSFT,BRK.B,NVDA,SPY", "TRADEFLOW_DATA_BARS": str(compound.bars),
                   "TRADEFLOW_DATA_SEED": str(compound.seed), "TRADEFLOW_DATA_RATE": "200"}
    feed = 5 * compound.bars / 200
    plan = kill_plan(compound.seed, compound.kills, over=0.8 * feed, targets=COMPOUND_TARGETS)

    async def fault(stack, nc) -> str:
        started = time.monotonic()
        done = []
        for at, name in plan:
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            if stack.supervisor.crash(name):   # not if it is between a crash and its restart
                done.append(f"{name.removesuffix('-server')} {time.monotonic() - started:.1f}")
                kills_at.append(datetime.now(timezone.utc))
        return f"seed {compound.seed}: {', '.join(done)}"

    async def fed_after_the_kills(stack, nc) -> None:
        # on a loaded machine the plan drifts behind the feed: all but the last kill must land while it runs
        last = max(m.metadata.timestamp for m in await stream_messages(nc, PIPELINE_STREAM, "data_ready.>"))
        during = sum(at < last for at in kills_at)
        assert during >= len(kills_at) - 1, f"only {during} of {len(kills_at)} kills landed while the feed ran"

    kills_at: list[datetime] = []
    await run_fault(make_stack, f"{len(plan)} kill -9 at random: services, nats-server, Redis ({compound.label})",
                    fault, data=data, after=fed_after_the_kills)
