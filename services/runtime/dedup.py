"""The consume-side dedup registry in Redis: which inputs a service has finished.

Ids are fields of one hash per service and day, `tradeflow:done:<service>:<YYYYMMDD>` (the
day they were marked, UTC), each hash expiring `ttl` after its day ends. Checking a batch is
one command, a server-side script over the day hashes (an HEXISTS per id and day the ttl
spans, stopping at the first day that has it); marking one is one round trip, an HSET and an
EXPIRE pipelined. A batch's ids are sent once, whatever the ttl (a SET per id, then an HMGET
per day, were the largest costs of a service under load). Marks are written only after the
outputs of the input are durable.

Marks are never written in a transaction or by a script that writes twice: Redis before 8.0
wraps those in MULTI/EXEC in its append-only file and, with the default user off (as tradeflow
runs it), refuses that EXEC when it reloads the file after a restart, so every such mark would
be gone (redis/redis#14541, fixed by #14545). Plain commands reload.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone

from redis.asyncio import Redis

from contracts.errors import RedisUnavailable
from services.runtime.connect import REDIS_UNAVAILABLE

_DAY = 86_400

# KEYS: the day hashes, newest first; ARGV: the ids. Returns the indexes (1-based) of the ids found.
_SEEN = """
local found = {}
for i, id in ipairs(ARGV) do
  for _, key in ipairs(KEYS) do
    if redis.call('HEXISTS', key, id) == 1 then
      found[#found + 1] = i
      break
    end
  end
end
return found
"""
_FIELDS_PER_HSET = 4_000   # ids per HSET command, so a huge batch does not make one huge command


class DedupRegistry:
    """Checks and marks processed event ids for one service."""

    def __init__(self, redis: Redis, service: str, ttl_seconds: float) -> None:
        self._redis = redis
        self._prefix = f"tradeflow:done:{service}:"
        self._ttl = max(1, int(ttl_seconds))
        self._days = math.ceil(self._ttl / _DAY) + 1   # the days whose hashes may still hold a live mark
        self._keys_of: tuple[date, list[str]] | None = None
        self._seen = redis.register_script(_SEEN)

    def _key(self, day: datetime) -> str:
        return f"{self._prefix}{day:%Y%m%d}"

    def _keys(self, today: datetime) -> list[str]:
        """The hashes a mark may still be in, newest first (the same list all day: kept until the date changes)."""
        date = today.date()
        if self._keys_of is None or self._keys_of[0] != date:
            self._keys_of = (date, [self._key(today - timedelta(days=back)) for back in range(self._days)])
        return self._keys_of[1]

    async def seen(self, ids: Sequence[str], now: datetime | None = None) -> set[str]:
        """The subset of `ids` already processed; RedisUnavailable if Redis cannot say."""
        if not ids:
            return set()
        today = now or datetime.now(timezone.utc)
        try:
            found = await self._seen(keys=self._keys(today), args=ids)
        except REDIS_UNAVAILABLE as exc:
            raise RedisUnavailable(f"dedup registry: {exc}") from exc
        return {ids[index - 1] for index in found}

    async def mark(self, ids: Sequence[str], now: datetime | None = None) -> None:
        """Record `ids` as processed; RedisUnavailable if it could not."""
        if not ids:
            return
        today = now or datetime.now(timezone.utc)
        key = self._keys(today)[0]
        end_of_day = (_DAY - (today.hour * 3600 + today.minute * 60 + today.second))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(ids), _FIELDS_PER_HSET):
                    pipe.hset(key, mapping=dict.fromkeys(ids[start:start + _FIELDS_PER_HSET], 1))
                pipe.expire(key, self._ttl + end_of_day)
                await pipe.execute()
        except REDIS_UNAVAILABLE as exc:
            raise RedisUnavailable(f"dedup registry: {exc}") from exc
