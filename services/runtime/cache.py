"""The Redis cache: one namespace, a TTL per kind of data, hit/miss counters; passes through when Redis is down.

Keys are `<namespace>:cache:<kind>:<key>`, values JSON. A cache is never the source of
truth: when Redis cannot answer, `get_many` finds nothing and `set_many` stores nothing,
and the `error` counter (and a log line, at most one per outage) say so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.runtime.metrics import Metrics

log = logging.getLogger(__name__)
Ttl = Annotated[float, msgspec.Meta(gt=0, le=30 * 24 * 3600)]


class CacheSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_CACHE_NAMESPACE and the TTL in seconds of each kind (TRADEFLOW_CACHE_TTL_<KIND>)."""

    namespace: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")] = "tradeflow"
    ttl_market: Ttl = 5.0
    ttl_news: Ttl = 60.0
    ttl_regime: Ttl = 300.0

    def ttl(self, kind: str) -> float:
        """The TTL of `kind`; ValueError for a kind with none."""
        value = getattr(self, f"ttl_{kind}", None)
        if value is None:
            raise ValueError(f"no TTL for cache kind {kind!r}")
        return value


class Cache:
    """get/set by kind and key; every call is one round trip however many keys."""

    def __init__(self, redis: Redis, settings: CacheSettings, metrics: Metrics) -> None:
        self._redis = redis
        self.settings = settings
        self._metrics = metrics
        self._down = False

    def _key(self, kind: str, key: str) -> str:
        return f"{self.settings.namespace}:cache:{kind}:{key}"

    def _count(self, kind: str, result: str, n: int = 1) -> None:
        if n:
            self._metrics.cache_requests.labels(self._metrics.service, kind, result).inc(n)

    def _failed(self, exc: BaseException, kind: str, n: int) -> None:
        self._count(kind, "error", n)
        if not self._down:
            log.warning("cache unavailable, passing through", extra={"error": repr(exc)})
        self._down = True

    async def get_many(self, kind: str, keys: Iterable[str]) -> dict[str, Any]:
        """The cached values of `keys` that are there (none while Redis is down)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        try:
            values = await self._redis.mget([self._key(kind, k) for k in keys])
        except (RedisError, OSError) as exc:
            self._failed(exc, kind, len(keys))
            return {}
        self._down = False
        found = {}
        for key, raw in zip(keys, values):
            if raw is None:
                continue
            try:
                found[key] = msgspec.json.decode(raw)
            except msgspec.DecodeError:  # written by something else: a miss, not a crash
                continue
        self._count(kind, "hit", len(found))
        self._count(kind, "miss", len(keys) - len(found))
        return found

    async def set_many(self, kind: str, values: Mapping[str, Any]) -> bool:
        """Store `values` with the kind's TTL; False if Redis could not take them."""
        if not values:
            return True
        ttl = max(1, round(self.settings.ttl(kind) * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, value in values.items():
                    pipe.set(self._key(kind, key), msgspec.json.encode(value), px=ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc, kind, len(values))
            return False
        self._down = False
        self._count(kind, "set", len(values))
        return True
