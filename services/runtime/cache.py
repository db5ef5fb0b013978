"""The Redis cache: one namespace, a TTL per kind of data, hit/miss counters; passes through when Redis is down.

Keys are `<namespace>:cache:{<kind>}:<key>`, values JSON. The braces are a hash tag: Redis
Cluster places a key by the part in braces only, so one kind's keys share a slot and the MGET
of `get_many` (one kind, many keys) is one command there too (keys of several slots are refused
with CROSSSLOT). A kind is then served by one node; the values are small and live seconds.
Keys named before the hash tag (`<namespace>:cache:<kind>:<key>`) are misses, and expire with
their kind's TTL. A cache is never the source of truth: when Redis cannot answer,
`get_many` finds nothing and `set_many` stores nothing, and the `error` counter (and a log
line, at most one per outage) say so.

`get_or_compute` is single-flight: concurrent misses for one key in a service share one
computation (and one store); an error in it reaches every waiter and nothing is cached. It
also keeps what it got in the process for `local_ttl` seconds (TRADEFLOW_CACHE_LOCAL_TTL,
default 0.5 s, never longer than the kind's TTL; 0 turns it off; at most `local_size` keys):
a hot key is then a dictionary lookup, not a round trip, at the price of reading a value
up to that long after another service replaced it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Annotated, Any

import msgspec
from redis.asyncio import Redis

from services.runtime.connect import REDIS_UNAVAILABLE
from services.runtime.metrics import Metrics

log = logging.getLogger(__name__)
Ttl = Annotated[float, msgspec.Meta(gt=0, le=30 * 24 * 3600)]


class CacheSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_CACHE_NAMESPACE and the TTL in seconds of each kind (TRADEFLOW_CACHE_TTL_<KIND>)."""

    namespace: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")] = "tradeflow"
    ttl_market: Ttl = 5.0
    ttl_news: Ttl = 60.0
    ttl_regime: Ttl = 300.0
    local_ttl: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    local_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000

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
        self._flights: dict[tuple[str, str], asyncio.Task] = {}
        self._local: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()   # (kind, key) -> (until, value)
        self.counts: Counter[tuple[str, str]] = Counter()   # (kind, hit|miss|set|error|computed) -> keys

    def _key(self, kind: str, key: str) -> str:
        return f"{self.settings.namespace}:cache:{{{kind}}}:{key}"

    def _count(self, kind: str, result: str, n: int = 1) -> None:
        if n:
            self._metrics.cache_requests.labels(self._metrics.service, kind, result).inc(n)
            self.counts[kind, result] += n

    def stats(self) -> dict[str, Any]:
        """Counts per kind and result, whether Redis answered last, and the computations in flight."""
        kinds: dict[str, dict[str, int]] = {}
        for (kind, result), n in sorted(self.counts.items()):
            kinds.setdefault(kind, {})[result] = n
        return {"namespace": self.settings.namespace, "available": not self._down, "in_flight": len(self._flights),
                "kinds": kinds}

    async def get_or_compute(self, kind: str, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value of `key`, or `compute()`'s, stored with the kind's TTL. Concurrent misses
        for one key share one computation; with Redis down every call computes (once per flight)."""
        ttl = self.settings.ttl(kind)   # an unknown kind is an error before any work
        near = self._local.get((kind, key))
        if near is not None:
            if near[0] > time.monotonic():
                self._count(kind, "hit_local")
                return near[1]
            del self._local[kind, key]
        flight = self._flights.get((kind, key))
        if flight is None:
            found = await self.get_many(kind, [key])
            if key in found:
                self._keep(kind, key, found[key], ttl)
                return found[key]
            flight = self._flights.get((kind, key))   # another miss may have started it meanwhile
            if flight is None:
                flight = asyncio.create_task(self._compute(kind, key, compute), name=f"cache-{kind}-{key}"[:100])
                self._flights[kind, key] = flight
                flight.add_done_callback(functools.partial(self._landed, (kind, key)))
        return await asyncio.shield(flight)   # one waiter cancelled does not cancel the others' value

    def _landed(self, flight: tuple[str, str], _: asyncio.Task) -> None:
        self._flights.pop(flight, None)

    async def _compute(self, kind: str, key: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        value = await compute()
        self._count(kind, "computed")
        await self.set_many(kind, {key: value})
        self._keep(kind, key, value, self.settings.ttl(kind))
        return value

    def _keep(self, kind: str, key: str, value: Any, ttl: float) -> None:
        keep = min(self.settings.local_ttl, ttl)
        if keep <= 0 or self.settings.local_size == 0:
            return
        self._local[kind, key] = (time.monotonic() + keep, value)
        self._local.move_to_end((kind, key))
        while len(self._local) > self.settings.local_size:
            self._local.popitem(last=False)

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
        except REDIS_UNAVAILABLE as exc:
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
        except REDIS_UNAVAILABLE as exc:
            self._failed(exc, kind, len(values))
            return False
        self._down = False
        self._count(kind, "set", len(values))
        return True
