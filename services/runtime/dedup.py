"""The consume-side dedup registry in Redis: which inputs a service has finished.

Ids are fields of one hash per service and day, `tradeflow:done:{<service>}:<YYYYMMDD>` (the
day they were marked, UTC), each hash expiring `ttl` after its day ends. Checking a batch is
one command, a server-side script over the day hashes (an HEXISTS per id and day the ttl
spans, stopping at the first day that has it); marking one is one round trip, an HSET and an
EXPIRE pipelined. A batch's ids are sent once, whatever the ttl (a SET per id, then an HMGET
per day, were the largest costs of a service under load). Marks are written only after the
outputs of the input are durable.

The braces are a hash tag: Redis Cluster places a key by the part in braces only, so every day
hash of one service is in one slot and the script, which names them all, runs there (a script
whose keys span slots is refused with CROSSSLOT). Services still spread over the nodes.

Keys named before the hash tag (`tradeflow:done:<service>:<YYYYMMDD>`) expire by themselves a
ttl after their day; they are not ignored meanwhile: the first check after an upgrade moves the
day hashes the ttl still covers under the new names (RENAMENX, merged field by field if marks
have been written under the new name already), because a stateful agent's rebuild folds what
is marked above its ack floor, and a mark lost at an upgrade would leave its state short. A
deployment that only ever ran this layout finds none to move (one round trip, once). Their
names span slots, which is harmless: that layout's script could not run on a Cluster either.

Marks are never written in a transaction or by a script that writes twice: Redis before 8.0
wraps those in MULTI/EXEC in its append-only file and, with the default user off (as tradeflow
runs it), refuses that EXEC when it reloads the file after a restart, so every such mark would
be gone (redis/redis#14541, fixed by #14545). Plain commands reload.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta, timezone
from typing import cast

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


def done_key_prefix(service: str) -> str:
    """What every dedup key of `service` starts with (its hash tag included); the ACLs grant it."""
    return f"tradeflow:done:{{{service}}}:"


class DedupRegistry:
    """Checks and marks processed event ids for one service."""

    def __init__(self, redis: Redis, service: str, ttl_seconds: float) -> None:
        self._redis = redis
        self._prefix = done_key_prefix(service)
        self._old_prefix = f"tradeflow:done:{service}:"   # the layout before the hash tag
        self._ttl = max(1, int(ttl_seconds))
        self._days = math.ceil(self._ttl / _DAY) + 1   # the days whose hashes may still hold a live mark
        self._keys_of: tuple[date, list[str]] | None = None
        self._carried_over = False
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
            if not self._carried_over:
                await self._carry_over(today)
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

    async def _carry_over(self, today: datetime) -> None:
        """Move the day hashes of the layout before the hash tag that the ttl still covers under their new
        names, each expiring when it would have (see the module's docstring); once per registry."""
        days = [today - timedelta(days=back) for back in range(self._days)]
        olds = [f"{self._old_prefix}{day:%Y%m%d}" for day in days]
        async with self._redis.pipeline(transaction=False) as pipe:
            for old in olds:
                pipe.exists(old)   # one key a command: a Cluster may hold them on different nodes
            there = await pipe.execute()
        for day, old, exists in zip(days, olds, there):
            if exists:
                await self._move(old, self._key(day), expires=self._ends(day) + self._ttl)
        self._carried_over = True

    async def _move(self, old: str, new: str, *, expires: int) -> None:
        """`old`'s fields into `new` (renamed if `new` is not there yet, else merged), expiring at `expires`."""
        if not await self._redis.renamenx(old, new):
            cursor = 0
            while True:
                cursor, fields = await self._redis.hscan(old, cursor, count=_FIELDS_PER_HSET)
                if fields:
                    await self._redis.hset(new, mapping=cast(dict, fields))   # a dict: RESP2 and RESP3
                if cursor == 0:
                    break
            await self._redis.delete(old)
        await self._redis.expireat(new, expires)

    @staticmethod
    def _ends(day: datetime) -> int:
        """The Unix time at which `day` (UTC) ends."""
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        return int(start.timestamp()) + _DAY
