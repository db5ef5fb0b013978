"""The cache manager against a real redis-server and a Sentinel set's master: TTL per kind, single-flight,
pass-through when Redis is away."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.ops.supervisor import free_port
from services.runtime.cache import Cache, CacheSettings
from services.runtime.metrics import Metrics

pytestmark = pytest.mark.integration


@pytest.fixture
def redis(any_redis):
    """One redis-server, then a Sentinel set's master: the cache behaves the same on each."""
    return any_redis


def counting(value, delay: float = 0.0):
    calls = []

    async def compute():
        calls.append(1)
        await asyncio.sleep(delay)
        return value

    return compute, calls


async def test_values_expire_after_their_kinds_ttl_and_are_namespaced(redis):
    cache = Cache(redis, CacheSettings(namespace="desk1", ttl_market=0.3, ttl_regime=30, local_ttl=0), Metrics("quant"))
    compute, calls = counting({"bid": 10.5})
    assert await cache.get_or_compute("market", "AAPL", compute) == {"bid": 10.5}
    assert await cache.get_or_compute("market", "AAPL", compute) == {"bid": 10.5}
    assert len(calls) == 1
    assert await redis.exists("desk1:cache:{market}:AAPL") == 1
    assert 0 < await redis.pttl("desk1:cache:{market}:AAPL") <= 300
    await asyncio.sleep(0.45)
    assert await cache.get_or_compute("market", "AAPL", compute) == {"bid": 10.5}
    assert len(calls) == 2, "an expired value is computed again"
    assert cache.stats()["kinds"]["market"] == {"computed": 2, "hit": 1, "miss": 2, "set": 2}


async def test_concurrent_misses_for_one_key_compute_once(redis):
    cache = Cache(redis, CacheSettings(), Metrics("strategy"))
    compute, calls = counting({"regime": "calm"}, delay=0.2)
    other, other_calls = counting({"regime": "wild"}, delay=0.2)
    results = await asyncio.gather(*(cache.get_or_compute("regime", "AAPL", compute) for _ in range(50)),
                                   cache.get_or_compute("regime", "MSFT", other))
    assert results[:50] == [{"regime": "calm"}] * 50 and results[50] == {"regime": "wild"}
    assert (len(calls), len(other_calls)) == (1, 1)
    assert cache.stats()["in_flight"] == 0


async def test_an_error_in_the_computation_reaches_every_waiter_and_nothing_is_cached(redis):
    cache = Cache(redis, CacheSettings(), Metrics("strategy"))

    async def broken():
        await asyncio.sleep(0.05)
        raise ValueError("provider down")

    outcomes = await asyncio.gather(*(cache.get_or_compute("news", "AAPL", broken) for _ in range(5)),
                                    return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)
    assert await redis.exists("tradeflow:cache:{news}:AAPL") == 0


async def test_with_redis_away_the_cache_passes_through_and_counts_errors():
    away = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    cache = Cache(away, CacheSettings(local_ttl=0), Metrics("data"))
    compute, calls = counting(42)
    assert await cache.get_or_compute("market", "AAPL", compute) == 42
    assert await cache.get_or_compute("market", "AAPL", compute) == 42
    assert len(calls) == 2
    stats = cache.stats()
    assert stats["available"] is False and stats["kinds"]["market"]["error"] == 4   # 2 gets, 2 sets
    await away.aclose()


async def test_an_unknown_kind_is_an_error_before_any_work(redis):
    cache = Cache(redis, CacheSettings(), Metrics("data"))
    compute, calls = counting(1)
    with pytest.raises(ValueError, match="no TTL for cache kind 'quotes'"):
        await cache.get_or_compute("quotes", "AAPL", compute)
    assert not calls


async def test_a_hot_key_is_served_from_the_process_for_local_ttl_then_from_redis(redis):
    cache = Cache(redis, CacheSettings(local_ttl=0.2, local_size=2), Metrics("quant"))
    compute, calls = counting({"regime": "calm"})
    for _ in range(100):
        assert await cache.get_or_compute("regime", "AAPL", compute) == {"regime": "calm"}
    assert cache.counts["regime", "hit_local"] == 99 and cache.counts["regime", "hit"] == 0
    await asyncio.sleep(0.25)
    assert await cache.get_or_compute("regime", "AAPL", compute) == {"regime": "calm"}
    assert cache.counts["regime", "hit"] == 1 and len(calls) == 1
    for key in ("MSFT", "TSLA", "NVDA"):   # the near cache keeps at most local_size keys
        await cache.get_or_compute("regime", key, compute)
    assert len(cache._local) == 2
