"""Integration fixtures: a whole deployment (real nats-server -js, real redis-server, six
service processes) per test, on free loopback ports, under the test's own tmp directory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats
import pytest
import pytest_asyncio

from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM
from services.ops import observe
from services.ops.stack import Stack
from services.registry import CONSUMERS
from services.runtime.connect import connect_redis, nats_options

pytestmark = pytest.mark.integration


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll `check` until it is true; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


stream_messages = observe.stream_messages


@pytest_asyncio.fixture
async def make_stack(tmp_path):
    """Factory: start a deployment with extra service environment; stopped after the test."""
    stacks: list[Stack] = []
    clients = []

    async def start(env: dict[str, str] | None = None, per_service: dict[str, dict[str, str]] | None = None,
                    services: tuple[str, ...] | None = None, replicas: dict[str, int] | None = None,
                    symbols: tuple[str, ...] = (), redis_url: str | None = None) -> tuple[Stack, nats.NATS]:
        stack = Stack(tmp_path / f"stack{len(stacks)}", env=env or {}, per_service_env=per_service or {},
                      replicas=replicas or {}, symbols=symbols, redis_url=redis_url,
                      **({"services": services} if services else {}))
        stacks.append(stack)
        await stack.start()
        nc = await nats.connect(**nats_options(stack.nats_url))
        clients.append(nc)
        return stack, nc

    yield start
    for nc in clients:
        await nc.close()
    for stack in stacks:
        codes = await stack.stop()
        bad = {k: v for k, v in codes.items() if v not in (0, None)}
        assert not bad, f"processes did not exit cleanly: {bad} (logs in {stack.logs})"


@pytest.fixture(scope="session")
def sentinels():
    """A Sentinel set (master, replica, three sentinels; the data nodes with a password) shared by this
    test process's tests that do not kill any of it."""
    from tests.servers import sentinel_set

    with sentinel_set(password="sentinel-test-secret") as started:
        yield started


@pytest.fixture
def make_sentinels():
    """Factory: a Sentinel set of this test's own (to kill its master), stopped after the test."""
    from tests.servers import SentinelSet

    started: list[SentinelSet] = []

    def start(**kwargs) -> SentinelSet:
        started.append(SentinelSet(**kwargs))
        return started[-1].start()

    yield start
    for each in started:
        each.stop()


@pytest_asyncio.fixture(params=["redis", "sentinel"])
async def any_redis(request, make_stack):
    """A Redis client of each kind a deployment may give: one redis-server (a stack's, as the operator), and
    the master of a Sentinel set (through connect_redis, as a service connects), emptied first."""
    if request.param == "redis":
        stack, _ = await make_stack(services=())
        client = await connect_redis(stack.redis_url)
    else:
        client = await connect_redis(request.getfixturevalue("sentinels").url())
        await client.flushdb()
    yield client
    await client.aclose()


__all__ = ["CONSUMERS", "DLQ_STREAM", "PIPELINE_STREAM", "stream_messages", "wait_for"]
