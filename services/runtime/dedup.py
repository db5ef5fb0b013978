"""The consume-side dedup registry in Redis: which inputs a service has finished.

One round trip per batch (MGET to check, a pipeline of SET EX to mark). Keys are
`tradeflow:done:<service>:<event id>`; they are written only after the outputs
of the input are durable.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from contracts.errors import RedisUnavailable


class DedupRegistry:
    """Checks and marks processed event ids for one service."""

    def __init__(self, redis: Redis, service: str, ttl_seconds: float) -> None:
        self._redis = redis
        self._prefix = f"tradeflow:done:{service}:"
        self._ttl = max(1, int(ttl_seconds))

    async def seen(self, ids: Sequence[str]) -> set[str]:
        """The subset of `ids` already processed; RedisUnavailable if Redis cannot say."""
        if not ids:
            return set()
        try:
            values = await self._redis.mget([self._prefix + i for i in ids])
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"dedup registry: {exc}") from exc
        return {i for i, v in zip(ids, values) if v is not None}

    async def mark(self, ids: Sequence[str]) -> None:
        """Record `ids` as processed; RedisUnavailable if it could not."""
        if not ids:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.set(self._prefix + i, b"1", ex=self._ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RedisUnavailable(f"dedup registry: {exc}") from exc
