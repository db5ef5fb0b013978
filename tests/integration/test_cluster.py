"""A 3-node NATS cluster on loopback, streams replicated x3: the PIPELINE stream's leader node is killed
mid-stream; the pipeline goes on after the election with no acknowledged event lost and no fill twice."""

from __future__ import annotations

import asyncio
import signal
import time

import nats
import pytest

from contracts.subjects import PIPELINE_STREAM
from services.ops.stack import Stack
from services.ops.supervisor import http_json
from services.runtime.connect import nats_options
from tests.integration.conftest import stream_messages, wait_for
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, assert_matches_prediction, predicted

pytestmark = [pytest.mark.integration, pytest.mark.faults]   # a kill that must land mid-stream


async def test_killing_the_stream_leader_mid_stream_loses_nothing_and_fills_nothing_twice(tmp_path):
    _, sim, _ = predicted(LOGIC_ENV)
    # deliveries in flight when the consumer's leader dies come back after ack_wait: keep it short
    env = LOGIC_ENV | {"TRADEFLOW_STREAM_REPLICAS": "3", "TRADEFLOW_ACK_WAIT": "5"}
    paced = DATA_ENV | {"TRADEFLOW_DATA_RATE": "150"}      # 1,200 bars over 8 s: the kill lands mid-stream
    stack = Stack(tmp_path / "cluster", env=env, per_service_env={"data": paced}, nats_cluster=3)
    await stack.start()   # a failed start stops what it started
    nc = None
    try:
        nc = await nats.connect(**nats_options(stack.nats_url), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        jsm = nc.jsm()
        info = await jsm.stream_info(PIPELINE_STREAM)
        assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2

        async def some_processed() -> bool:
            return (await jsm.consumer_info(PIPELINE_STREAM, "audit")).ack_floor.stream_seq > 300

        await wait_for(some_processed, what="audit to process some events")
        _, progress = await http_json(stack.http_port("data"), "/v1/progress")
        assert not progress["done"], "the kill would not land mid-stream; slow the feed down"
        leader = (await jsm.stream_info(PIPELINE_STREAM)).cluster.leader
        node = f"nats-{leader.rsplit('-', 1)[1]}"
        before = (await jsm.stream_info(PIPELINE_STREAM)).state.last_seq
        killed_at = time.monotonic()
        await stack.supervisor.stop(node, signal.SIGKILL)     # stays down: the cluster runs on two nodes

        async def new_leader() -> str | None:
            try:
                now = (await asyncio.wait_for(jsm.stream_info(PIPELINE_STREAM), 1)).cluster.leader
            except (nats.errors.Error, asyncio.TimeoutError):
                return None
            return now if now and now != leader else None

        await wait_for(new_leader, timeout=30, what="a new PIPELINE leader")
        elected = time.monotonic() - killed_at

        async def storing_again() -> bool:
            try:
                return (await asyncio.wait_for(jsm.stream_info(PIPELINE_STREAM), 1)).state.last_seq > before + 10
            except (nats.errors.Error, asyncio.TimeoutError):
                return False

        await wait_for(storing_again, timeout=30, what="new events stored after the election")
        flowing = time.monotonic() - killed_at

        async def api_answers() -> bool:   # the meta leader may have been on the killed node too
            try:
                for durable in stack.durables:
                    await asyncio.wait_for(jsm.consumer_info(PIPELINE_STREAM, durable), 2)
                return True
            except (nats.errors.Error, asyncio.TimeoutError):
                return False

        await wait_for(api_answers, timeout=30, what="the JetStream API to answer for every consumer")
        await assert_matches_prediction(stack, nc, sim)   # every bar once, each stage as predicted, no fill twice
        stored = [m.metadata.timestamp for m in await stream_messages(nc, PIPELINE_STREAM, "data_ready.>")]
        gap = max((b - a).total_seconds() for a, b in zip(stored, stored[1:]))
        print(f"\nleader {leader} killed: new leader after {elected:.2f} s, events stored again after {flowing:.2f} s; "
              f"longest gap between two bars stored {gap:.2f} s (the feed sends one every {1 / 150:.3f} s)")
        assert gap < 30
    finally:
        if nc is not None:
            await nc.close()
        codes = await stack.stop()
    assert all(code in (0, None) for name, code in codes.items() if name != node), codes

