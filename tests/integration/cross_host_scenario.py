"""The cross-host run itself, on the observer host h0 of a network tests/integration/test_cross_host.py
made (pytest runs this file there, in that host's network namespace; it is not collected otherwise).

    h1: nats-1, PostgreSQL, Redis master, sentinel 1, data, strategy
    h2: nats-2, Redis replica, sentinel 2, quant, risk, dashboard
    h3: nats-3, sentinel 3, execution, audit, recorder

Streams are replicated x3; the event store, the fill ledger and the audit trail are in PostgreSQL;
Redis is reached through the sentinels. Mid-stream h3's link is cut for a few seconds, then restored;
later, still mid-stream, the Redis master is killed and the sentinels promote the replica.
Afterwards every stage matches the pure logic, no acknowledged event is lost, no order is filled
twice, the store holds every event of the stream once, and `tradeflow whatif --check` passes
against the PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import nats
import orjson
import pytest

from contracts.subjects import PIPELINE_STREAM
from replay.store import open_store
from services.ops.stack import Stack
from services.runtime.connect import nats_options
from tests.hosts import Network
from tests.integration.conftest import stream_messages, wait_for
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, assert_matches_prediction, predicted
from tests.servers import PostgresServer, SentinelSet

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CUT_FOR = 6.0   # seconds h3 is off the network


@pytest.fixture
def network():
    if Network.ENV not in os.environ:
        pytest.skip("runs on a network tests/integration/test_cross_host.py makes")
    return Network.from_env()


def figure(name: str, value: object) -> None:
    """A figure of the run, for the outer test to report (one JSON line on stdout)."""
    print("FIGURE " + orjson.dumps({name: value}).decode(), flush=True)


async def test_across_three_hosts(network, tmp_path):
    h0, h1, h2, h3 = network.hosts
    _, sim, _ = predicted(LOGIC_ENV)
    postgres = PostgresServer(host=h1.address, prefix=h1.prefix)
    sentinels = SentinelSet(places=[(h.prefix, h.address) for h in (h1, h2, h3)])
    stack = None
    try:
        await asyncio.to_thread(postgres.start)
        database = await asyncio.to_thread(postgres.database, "tradeflow")
        await asyncio.to_thread(sentinels.start)
        env = LOGIC_ENV | {"TRADEFLOW_STREAM_REPLICAS": "3", "TRADEFLOW_ACK_WAIT": "5", "TRADEFLOW_STORE": database}
        paced = DATA_ENV | {"TRADEFLOW_DATA_RATE": "60"}   # 1,200 bars over 20 s: both faults land mid-stream
        placement = {"nats-1": h1, "nats-2": h2, "nats-3": h3, "data": h1, "strategy": h1, "quant": h2,
                     "risk": h2, "dashboard": h2, "execution": h3, "audit": h3, "recorder": h3}
        stack = Stack(tmp_path / "stack", env=env, nats_cluster=3, hosts=placement, redis_url=sentinels.url(),
                      per_service_env={"data": paced, "execution": {"TRADEFLOW_EXECUTION_LEDGER": database},
                                       "audit": {"TRADEFLOW_AUDIT_LOG": database}})
        await stack.start()
        nc = await nats.connect(**nats_options(stack.nats_url), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        jsm = nc.jsm()

        async def audit_past(seq: int) -> bool:
            try:
                info = await asyncio.wait_for(jsm.consumer_info(PIPELINE_STREAM, "audit"), 2)
            except (nats.errors.Error, asyncio.TimeoutError):
                return False
            return info.ack_floor.stream_seq > seq

        async def mid_stream() -> None:
            _, progress = await stack.get("data", "/v1/progress")
            assert not progress["done"], "the fault would not land mid-stream; slow the feed down"

        await wait_for(lambda: audit_past(200), timeout=60, what="audit to process some events")
        await mid_stream()
        network.cut(h3)
        await asyncio.sleep(CUT_FOR)
        network.restore(h3)
        restored_at = time.monotonic()
        before = 0

        async def audit_floor() -> bool:   # JetStream may say "temporarily unavailable" while it settles
            nonlocal before
            try:
                before = (await asyncio.wait_for(jsm.consumer_info(PIPELINE_STREAM, "audit"), 2)).ack_floor.stream_seq
            except (nats.errors.Error, asyncio.TimeoutError):
                return False
            return True

        await wait_for(audit_floor, timeout=60, what="JetStream to answer after the link came back")
        await wait_for(lambda: audit_past(before), timeout=60, what="audit to go on after the link came back")
        figure("h3_cut_s", CUT_FOR)
        figure("audit_acking_again_after_restore_s", round(time.monotonic() - restored_at, 1))
        await wait_for(lambda: audit_past(before + 300), timeout=60, what="audit to catch up after the link came back")
        await mid_stream()
        killed = await asyncio.to_thread(sentinels.kill_master)
        failed_over_at = time.monotonic()
        promoted = await asyncio.to_thread(sentinels.wait_failover)
        figure("redis_failover_s", round(time.monotonic() - failed_over_at, 1))
        figure("redis_master", {"killed": killed, "promoted": promoted})

        await assert_matches_prediction(stack, nc, sim)   # every stage as predicted, no fill twice, no dead letter
        messages = await stream_messages(nc, PIPELINE_STREAM)
        async with open_store(database, read_only=True) as store:
            assert await store.count() == len(messages), "the store holds every event of the stream once"
            stored = {e.id async for e in store.query()}
        assert stored == {m.headers["ce-id"] for m in messages}
        figure("events", len(messages))
        figure("fills", sim.counts["executed_ready"])
        whatif = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "whatif", "--check", "--store", database,
            "--settings", str(stack.home / "settings.env"), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await whatif.communicate()
        assert whatif.returncode == 0, out.decode()[-3000:]
        await nc.close()
    finally:
        if stack is not None:
            await stack.stop()
            await stack.supervisor.stop_all()
        await asyncio.to_thread(sentinels.stop)
        await asyncio.to_thread(postgres.stop)
