"""Redis through Sentinel (REDIS_URL=redis+sentinel://...): a failover of the master is followed by the
same client, a whole deployment on a Sentinel set matches the pure logic with its master killed
mid-stream, and a Sentinel URL that cannot work stops a service at start-up with one line.

The cache's and the dedup registry's behaviour tests run on a Sentinel set's master too
(tests/integration/conftest.py `any_redis`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from contracts.errors import RedisUnavailable
from services.ops.supervisor import free_port, http_json
from services.runtime.cache import Cache, CacheSettings
from services.runtime.connect import connect_redis
from services.runtime.dedup import DedupRegistry
from services.runtime.metrics import Metrics
from services.runtime.sentinel import master_address
from tests.integration.conftest import PIPELINE_STREAM, wait_for
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, assert_matches_prediction, predicted

pytestmark = pytest.mark.integration

SECRET = "sentinel-test-secret"   # the data nodes' password of the sets these tests start


async def _seen_timed(registry: DedupRegistry, ids: list[str]) -> tuple[set[str] | None, float]:
    """What the registry says of `ids` (None: RedisUnavailable), and how long it took to say it."""
    started = time.monotonic()
    try:
        return await registry.seen(ids), time.monotonic() - started
    except RedisUnavailable:
        return None, time.monotonic() - started


@pytest.mark.faults
async def test_a_master_killed_fails_the_calls_cut_off_then_the_same_client_uses_the_new_master(make_sentinels):
    sentinels = make_sentinels(password=SECRET)
    redis = await connect_redis(sentinels.url())
    try:
        registry = DedupRegistry(redis, "risk", 86_400)
        cache = Cache(redis, CacheSettings(local_ttl=0), Metrics("quant"))
        before = [f"before-{n}" for n in range(1000)]
        await registry.mark(before)
        assert await redis.execute_command("WAIT", 1, 5000) == 1, "the replica did not take the marks"
        killed = sentinels.kill_master()
        assert master_address(redis) == killed

        found, took = await _seen_timed(registry, before)   # the sentinels still name the dead master
        assert found is None and took < 3, "a call to a dead master is RedisUnavailable (nak, retry), not a wait"
        assert await cache.get_many("market", ["AAPL"]) == {} and cache.stats()["available"] is False

        for _ in range(300):   # what the runtime does: retry after a backoff, with the same client
            found, took = await _seen_timed(registry, before)
            assert took < 5, "a call during the failover hung"
            if found is not None:
                break
            await asyncio.sleep(0.1)
        assert found == set(before), "the marks the replica had are there on the new master"
        promoted = await asyncio.to_thread(sentinels.wait_failover)
        assert master_address(redis) == promoted != killed
        await registry.mark(["after"])
        assert await registry.seen(["after", "never"]) == {"after"}
        await cache.set_many("market", {"AAPL": {"bid": 1.5}})
        assert await cache.get_many("market", ["AAPL"]) == {"AAPL": {"bid": 1.5}}
        assert cache.stats()["available"] is True

        sentinels.kill_master()   # no replica left: the calls keep failing fast, as RedisUnavailable
        for _ in range(5):
            found, took = await _seen_timed(registry, ["after"])
            assert found is None and took < 5
            await asyncio.sleep(0.5)
    finally:
        await redis.aclose()


@pytest.mark.faults   # the kill must land mid-stream: a paced feed
async def test_a_deployment_on_sentinel_matches_the_pure_logic_with_its_master_killed_mid_stream(
        make_stack, make_sentinels):
    _, sim, _ = predicted(LOGIC_ENV)
    sentinels = make_sentinels(password=SECRET)
    paced = DATA_ENV | {"TRADEFLOW_DATA_RATE": "250"}   # ~5 s of bars
    stack, nc = await make_stack(env=LOGIC_ENV, per_service={"data": paced}, redis_url=sentinels.url())
    _, health = await http_json(stack.http_port("risk"), "/v1/health")
    first = sentinels.master_address
    assert health["redis"]["master"] == first and SECRET not in str(health)
    assert health["redis"]["url"].startswith("redis+sentinel://***@")

    async def some_processed() -> bool:
        return (await nc.jsm().consumer_info(PIPELINE_STREAM, "execution")).ack_floor.stream_seq > 100

    await wait_for(some_processed, what="execution to process some events")
    sentinels.kill_master()
    _, progress = await http_json(stack.http_port("data"), "/v1/progress")
    assert not progress["done"], "the kill did not happen mid-stream; slow the feed down"
    promoted = await asyncio.to_thread(sentinels.wait_failover)
    await assert_matches_prediction(stack, nc, sim)
    for label in stack.labels():
        _, health = await http_json(stack.http_port(label), "/v1/health")
        assert health["checks"]["redis"] and health["redis"]["master"] == promoted, label
    log = (stack.logs / "execution.log").read_text()
    assert '"task": "redis-ping", "error": "ConnectionError' in log and "task recovered" in log, "no outage seen"
    assert SECRET not in log


async def test_a_sentinel_that_does_not_answer_is_passed_over_at_once(sentinels):
    members = sentinels.url().split("@", 1)[1]
    url = f"redis+sentinel://:{SECRET}@127.0.0.1:{free_port()},{members}"   # the first one is down
    started = time.monotonic()
    redis = await connect_redis(url)
    try:
        assert await redis.ping() and master_address(redis) == sentinels.master_address
        assert time.monotonic() - started < 1.5, "a sentinel that refuses was asked again and again"
    finally:
        await redis.aclose()


def _start_quant(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    data = tmp_path / "data"
    return subprocess.run([sys.executable, "-m", "services.cli", "run", "quant"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NATS_URL": "nats://127.0.0.1:1", "TRADEFLOW_HTTP_PORT": "0",
                                           "TRADEFLOW_DATA_DIR": str(data), **env})


@pytest.mark.parametrize("url, says", [
    (f"redis+sentinel://:{SECRET}@127.0.0.1:26379", "REDIS_URL names no service"),
    (f"redis+sentinel://:{SECRET}@127.0.0.1:26379x/tradeflow", "bad sentinel address '127.0.0.1:26379x'"),
    ("unknown-master", "name no master 'nosuch' (they watch 'tradeflow'"),
    ("none-reachable", "REDIS_URL: no sentinel answered at 127.0.0.1:"),
], ids=["no-service", "bad-port", "names-no-master", "none-reachable"])
def test_a_sentinel_url_that_cannot_work_stops_the_service_at_start_up_with_one_line(url, says, sentinels, tmp_path):
    if url == "unknown-master":
        url = sentinels.url(service="nosuch")
    elif url == "none-reachable":
        url = f"redis+sentinel://:{SECRET}@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/tradeflow"
    run = _start_quant({"REDIS_URL": url}, tmp_path)
    assert run.returncode == 1 and says in run.stderr.splitlines()[-1], run.stderr[-800:]
    assert run.stderr.splitlines()[-1].startswith("Error: REDIS_URL")
    assert SECRET not in run.stderr + run.stdout
    assert not (tmp_path / "data").exists(), "nothing is written"
