"""The consume-side dedup registry in Redis: which inputs a service has finished.

Ids are fields of one hash per service and day, `tradeflow:done:<service>:<YYYYMMDD>` (the
day they were marked, UTC), each hash expiring `ttl` after its day ends. Marking a batch is
one HSET and one EXPIRE; checking one is an HMGET per day the ttl spans, all in one round
trip, so the cost per batch does not grow with its size in commands (a SET per id did, and
was the largest cost of a service under load). Marks are written only after the outputs of
the input are durable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from redis.asyncio import Redis
from redis.exceptions import RedisError

from contracts.errors import RedisUnavailable

_DAY = 86_400


class DedupRegistry:
    """Checks and marks processed event ids for one service."""

    def __init__(self, redis: Redis, service: str, ttl_seconds: float) -> None:
        self._redis = redis
        self._prefix = f"tradeflow:done:{service}:"
        self._ttl = max(1, int(ttl_seconds))
        self._days = math.ceil(self._ttl / _DAY) + 1   # the days whose hashes may still hold a live mark

    def _key(self, day: datetime) -> str:
        return f"{self._prefix}{day:%Y%m%d}"

    async def seen(self, ids: Sequence[str], now: datetime | None = None) -> set[str]:
        """The subset of `ids` already processed; RedisUnavailable if Redis cannot say."""
        if not ids:
            return set()
        today = now or datetime.now(timezone.utc)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for back in range(self._days):
                    pipe.hmget(self._key(today - timedelta(days=back)), list(ids))
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"dedup registry: {exc}") from exc
        return {i for values in answers for i, v in zip(ids, values) if v is not None}

    async def mark(self, ids: Sequence[str], now: datetime | None = None) -> None:
        """Record `ids` as processed; RedisUnavailable if it could not."""
        if not ids:
            return
        today = now or datetime.now(timezone.utc)
        key = self._key(today)
        end_of_day = (_DAY - (today.hour * 3600 + today.minute * 60 + today.second))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hset(key, mapping=dict.fromkeys(ids, b"1"))
                pipe.expire(key, self._ttl + end_of_day)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"dedup registry: {exc}") from exc
