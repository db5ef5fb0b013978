"""The dedup registry says "Redis is unavailable" for every way a call fails while Redis restarts or fails over."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.errors import RedisUnavailable
from services.runtime.dedup import DedupRegistry


class Failing:
    """A client whose every script call and pipeline fails as a restarting server's connection does."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def register_script(self, _source: str):
        async def call(**_kwargs):
            raise self.error
        return call

    def pipeline(self, transaction: bool = True):
        assert not transaction, "marks are never written in a transaction (see services/runtime/dedup.py)"
        return FailingPipeline(self.error)


class FailingPipeline:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def __aenter__(self):
        return self

    async def __aexit__(self, *_exc) -> None:
        return None

    def hset(self, *_args, **_kwargs) -> None:
        pass

    def expire(self, *_args) -> None:
        pass

    def exists(self, *_args) -> None:
        pass

    async def execute(self):
        raise self.error


@pytest.mark.parametrize("error", [
    RedisConnectionError("Connection closed by server."),
    ConnectionResetError(104, "Connection reset by peer"),
    RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed"),
    MasterNotFoundError("No master found for 'tradeflow'"),   # the sentinels have not promoted a replica yet
])
async def test_a_call_cut_off_by_a_restart_is_redis_unavailable(error):
    registry = DedupRegistry(Failing(error), "strategy", 86_400)
    with pytest.raises(RedisUnavailable):
        await registry.seen(["e1"])
    with pytest.raises(RedisUnavailable):
        await registry.mark(["e1"])
