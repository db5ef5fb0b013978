"""The dedup registry against the redis-server a deployment runs (ACL users, default user off, AOF):
what a service marked done is still marked after redis-server is killed with -9 and restarted, and
after an upgrade from the key layout before the hash tag."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta, timezone

import pytest
from redis.asyncio import Redis

from services.ops.supervisor import wait_port
from services.runtime.dedup import DedupRegistry

pytestmark = pytest.mark.integration


async def test_marks_survive_a_kill_9_of_redis_server(make_stack):
    stack, _ = await make_stack(services=())
    ids = [f"event-{i}" for i in range(10_000)]   # more than one HSET's worth
    key = f"tradeflow:done:{{strategy}}:{datetime.now(timezone.utc):%Y%m%d}"   # today's hash, named before marking
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


async def test_marks_named_before_the_hash_tag_are_moved_under_the_new_names_at_the_first_check(make_stack):
    """An upgrade from the layout without the hash tag: a rebuild still finds what the service marked
    before, each day's hash expiring when it would have (a ttl after its day ends)."""
    stack, _ = await make_stack(services=())
    now = datetime.now(timezone.utc)
    today, yesterday = f"{now:%Y%m%d}", f"{now - timedelta(days=1):%Y%m%d}"
    async with Redis.from_url(stack.redis_url_for("risk")) as redis:   # risk's own user: both layouts granted
        await redis.hset(f"tradeflow:done:risk:{today}", mapping={"old-today": 1, "both": 1})
        await redis.expire(f"tradeflow:done:risk:{today}", 3600)
        await redis.hset(f"tradeflow:done:risk:{yesterday}", mapping=dict.fromkeys(
            [f"old-{n}" for n in range(10_000)], 1))   # more than one HSCAN's worth; no TTL at all
        registry = DedupRegistry(redis, "risk", 86_400)
        await registry.mark(["new", "both"], now=now)   # today's hash under the new name exists already
        asked = ["old-today", "old-0", "old-9999", "both", "new", "never"]
        assert await registry.seen(asked, now=now) == set(asked) - {"never"}
        assert not await redis.exists(f"tradeflow:done:risk:{today}", f"tradeflow:done:risk:{yesterday}")
        midnight = datetime(now.year, now.month, now.day, tzinfo=timezone.utc)
        for day, ends in ((today, midnight + timedelta(days=1)), (yesterday, midnight)):
            expected = (ends + timedelta(seconds=86_400) - datetime.now(timezone.utc)).total_seconds()
            assert abs(await redis.ttl(f"tradeflow:done:{{risk}}:{day}") - expected) < 5, day
        again = DedupRegistry(redis, "risk", 86_400)   # a restart: nothing left to move, every mark still seen
        assert await again.seen(asked, now=now) == set(asked) - {"never"}
