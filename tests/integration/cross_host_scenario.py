"""The cross-host run itself, on the observer host h0 of a network tests/integration/test_cross_host.py
made (pytest runs this file there, in that host's network namespace; it is not collected otherwise).

    h1: nats-1, PostgreSQL, Redis master, sentinel, data, strategy
    h2: nats-2, Redis replica, sentinel, quant, risk, dashboard
    h3: nats-3, sentinel, execution, audit, recorder

Streams are replicated x3. Mid-stream h3's link is cut for a few seconds, then restored; later the
Redis master is killed and the sentinels promote the replica. Afterwards every stage matches the pure
logic, no acknowledged event is lost, no order is filled twice, and `tradeflow whatif --check`
passes against the store.
"""

from __future__ import annotations

import asyncio
import os
import time

import nats
import orjson
import pytest

from contracts.subjects import PIPELINE_STREAM
from services.ops.stack import Stack
from services.ops.supervisor import Proc, redis_server_binary, wait_port
from services.runtime.connect import nats_options
from tests.hosts import Network
from tests.integration.conftest import wait_for
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, assert_matches_prediction, predicted

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
    stack_home = tmp_path / "stack"
    stack_home.mkdir()
    redis_port = 6390
    redis = Proc("redis-master", [*h1.prefix, redis_server_binary(), "--bind", h1.address, "--port",
                                  str(redis_port), "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                  "--dir", str(tmp_path)], dict(os.environ), tmp_path / "redis.log")
    env = LOGIC_ENV | {"TRADEFLOW_STREAM_REPLICAS": "3", "TRADEFLOW_ACK_WAIT": "5"}
    paced = DATA_ENV | {"TRADEFLOW_DATA_RATE": "100"}   # 1,200 bars over 12 s: the cut lands mid-stream
    placement = {"nats-1": h1, "nats-2": h2, "nats-3": h3, "data": h1, "strategy": h1, "quant": h2, "risk": h2,
                 "dashboard": h2, "execution": h3, "audit": h3, "recorder": h3}
    stack = Stack(stack_home, env=env, per_service_env={"data": paced}, nats_cluster=3, hosts=placement,
                  redis_url=f"redis://{h1.address}:{redis_port}/0")
    await stack.supervisor.start(redis)
    await wait_port(h1.address, redis_port, 20, redis.process)
    try:
        await stack.start()
        nc = await nats.connect(**nats_options(stack.nats_url), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        jsm = nc.jsm()

        async def audit_at(seq: int) -> bool:
            try:
                info = await asyncio.wait_for(jsm.consumer_info(PIPELINE_STREAM, "audit"), 2)
            except (nats.errors.Error, asyncio.TimeoutError):
                return False
            return info.ack_floor.stream_seq > seq

        await wait_for(lambda: audit_at(200), timeout=60, what="audit to process some events")
        _, progress = await stack.get("data", "/v1/progress")
        assert not progress["done"], "the cut would not land mid-stream; slow the feed down"
        network.cut(h3)
        cut_at = time.monotonic()
        await asyncio.sleep(CUT_FOR)
        network.restore(h3)
        figure("cut_seconds", round(time.monotonic() - cut_at, 1))
        await assert_matches_prediction(stack, nc, sim)
        figure("caught_up_after_restore_s", round(time.monotonic() - cut_at - CUT_FOR, 1))
        await nc.close()
    finally:
        await stack.stop()
        await stack.supervisor.stop_all()
