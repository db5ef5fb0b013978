"""Every command naming several keys names keys of one Redis Cluster slot (the hash tags of
services/runtime/dedup.py and services/runtime/cache.py), so the dedup script and the cache's MGET
work on a Cluster, where keys of several slots are refused (CROSSSLOT)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from redis.crc import key_slot

from services.runtime.cache import Cache, CacheSettings
from services.runtime.dedup import DedupRegistry
from services.runtime.metrics import Metrics


class Recording:
    """A client that answers as an empty Redis would and records the keys each command names."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, list[str]]] = []

    def register_script(self, _source: str):
        async def call(keys=(), args=()):
            self.commands.append(("EVALSHA", list(keys)))
            return []
        return call

    def pipeline(self, transaction: bool = True):
        return RecordingPipeline(self)

    async def mget(self, keys):
        self.commands.append(("MGET", list(keys)))
        return [None] * len(keys)


class RecordingPipeline:
    def __init__(self, client: Recording) -> None:
        self.client, self.queued = client, 0

    async def __aenter__(self):
        return self

    async def __aexit__(self, *_exc) -> None:
        return None

    def __getattr__(self, command: str):
        def queue(key, *_args, **_kwargs):   # the pipelined commands take one key each
            self.client.commands.append((command.upper(), [key]))
            self.queued += 1
        return queue

    async def execute(self):
        return [0] * self.queued


def slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


@pytest.mark.parametrize("ttl, days", [(60, 2), (86_400, 2), (7 * 86_400, 8), (30 * 86_400, 31)],
                         ids=["minute", "day", "week", "month"])
async def test_the_dedup_registry_s_commands_each_touch_one_slot(ttl, days):
    client = Recording()
    registry = DedupRegistry(client, "strategy", ttl)   # type: ignore[arg-type]
    now = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    await registry.seen([f"e{n}" for n in range(10)], now=now)
    await registry.mark([f"e{n}" for n in range(10_000)], now=now)
    [script] = [keys for name, keys in client.commands if name == "EVALSHA"]
    assert len(set(script)) == days, "every day hash the ttl spans is asked"
    for name, keys in client.commands:
        assert len(slots(keys)) == 1, (name, keys)


def test_each_service_s_dedup_keys_have_a_slot_of_their_own_tag():
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    keys = {name: DedupRegistry(Recording(), name, 86_400)._keys(now)   # type: ignore[arg-type]
            for name in ("strategy", "quant", "risk", "execution", "audit")}
    assert all(len(slots(k)) == 1 for k in keys.values())
    assert len({next(iter(slots(k))) for k in keys.values()}) > 1, "the services spread over the slots"


@pytest.mark.parametrize("kind", ["market", "news", "regime"])
async def test_the_cache_s_mget_of_one_kind_touches_one_slot(kind):
    client = Recording()
    cache = Cache(client, CacheSettings(namespace="desk1"), Metrics("quant"))   # type: ignore[arg-type]
    symbols = [f"SYM{n}" for n in range(200)]
    assert await cache.get_many(kind, symbols) == {}
    await cache.set_many(kind, dict.fromkeys(symbols, 1))
    [mget] = [keys for name, keys in client.commands if name == "MGET"]
    assert len(mget) == 200 and len(slots(mget)) == 1
    assert all(len(keys) == 1 for name, keys in client.commands if name != "MGET")
    assert mget[0] == f"desk1:cache:{{{kind}}}:SYM0"
