"""The dedup registry against the redis-server a deployment runs (ACL users, default user off, AOF):
what a service marked done is still marked after redis-server is killed with -9 and restarted."""

from __future__ import annotations

import signal
from datetime import datetime, timezone

import pytest
from redis.asyncio import Redis

from services.ops.supervisor import wait_port
from services.runtime.dedup import DedupRegistry

pytestmark = pytest.mark.integration


async def test_marks_survive_a_kill_9_of_redis_server(make_stack):
    stack, _ = await make_stack(services=())
    ids = [f"event-{i}" for i in range(10_000)]   # more than one HSET's worth
    key = f"tradeflow:done:strategy:{datetime.now(timezone.utc):%Y%m%d}"   # today's hash, named before marking
    redis = Redis.from_url(stack.redis_url_for("strategy"))
    try:
        registry = DedupRegistry(redis, "strategy", 86_400)
        await registry.mark(ids[:3])
        await registry.mark(ids[3:])
        assert await registry.seen(ids) == set(ids)
    finally:
        await redis.aclose()
    await stack.supervisor.restart("redis-server", signal.SIGKILL)   # on its append-only file
    await wait_port("127.0.0.1", int(stack.redis_address.rsplit(":", 1)[1]), 20)
    redis = Redis.from_url(stack.redis_url_for("strategy"))
    try:
        registry = DedupRegistry(redis, "strategy", 86_400)
        assert await registry.seen(ids) == set(ids), "marks lost when redis-server reloaded its append-only file"
        assert 86_400 < await redis.ttl(key) <= 2 * 86_400   # the day's hash expires a ttl after the day ends
    finally:
        await redis.aclose()
    log = (stack.logs / "redis.log").read_text()
    assert "AOF-loading-client" not in log, "redis-server refused part of its append-only file"
