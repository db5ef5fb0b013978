"""Least privilege on NATS: each service's user publishes only its own outputs and dead letters; a
service run with the wrong user stops loudly instead of timing out; Redis wants its password."""

from __future__ import annotations

import asyncio
import functools
import signal

import nats
import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM
from services import observe
from services.runtime.config import RuntimeSettings
from services.runtime.service import EXIT_FAILED
from services.runtime.topology import ensure_streams
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

OWN = {"data": "data_ready.X", "strategy": "signals_ready.X", "quant": "validated_ready.X",
       "risk": "approved_ready.X", "execution": "executed_ready.X"}
BAR = b'{"symbol":"X","ts":"2024-01-02T14:30:00Z","open":1,"high":2,"low":0.5,"close":1.5,"volume":1}'


async def connect_as(stack, user: str):
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(stack.nats_url_for(user), error_cb=on_error, allow_reconnect=False)
    return nc, errors


async def test_each_service_user_publishes_only_its_own_subjects(make_stack):
    stack, admin = await make_stack(services=())   # the servers and topology only
    await ensure_streams(admin.jsm(), RuntimeSettings())
    for user in ("data", "strategy", "quant", "risk", "execution", "audit", "recorder", "dashboard"):
        nc, errors = await connect_as(stack, user)
        try:
            others = [subject for owner, subject in OWN.items() if owner != user] + ["dlq.someone.data_ready.X"]
            if user == "dashboard":   # it publishes pipeline events only to redrive a dead letter; never a dead letter
                others = ["dlq.someone.data_ready.X", "dlq.dashboard.data_ready.X", "replay.x.data_ready.X"]
            for subject in others:
                with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                    await nc.jetstream().publish(subject, BAR, timeout=0.5)
            await wait_for(functools.partial(_has, errors, len(others)), timeout=5,
                           what=f"{user}: the permission errors")
            pipeline = (await admin.jsm().stream_info(PIPELINE_STREAM)).state.subjects or {}
            assert set(pipeline) <= set(OWN.values()), f"{user}: a refused publish was stored"
            if user in OWN:
                assert (await nc.jetstream().publish(OWN[user], BAR, timeout=5)).stream == PIPELINE_STREAM
            if user != "dashboard":
                assert (await nc.jetstream().publish(f"dlq.{user}.data_ready.X", BAR, timeout=5)).stream == DLQ_STREAM
        finally:
            await nc.close()
    pipeline = (await admin.jsm().stream_info(PIPELINE_STREAM, subjects_filter=">")).state.subjects
    assert pipeline == {subject: 1 for subject in OWN.values()}, "each own subject once, nothing else"


async def _has(errors: list[str], n: int) -> bool:
    return sum("permissions violation" in e.lower() for e in errors) >= n


async def test_a_service_with_the_wrong_user_stops_loudly(make_stack):
    # strategy run as quant: its first dead letter (dlq.strategy.*) is refused
    stack, nc = await make_stack(services=("strategy",), per_service={"strategy": {"TRADEFLOW_PUBLISH_TIMEOUT": "1"}})
    stack.per_service_env["strategy"]["NATS_URL"] = stack.nats_url_for("quant")
    await stack.restart_service("strategy", signal.SIGTERM)
    await nc.publish("data_ready.X", b"not json")

    log = stack.logs / "strategy.log"

    async def stopped() -> bool:
        return "stopping: a task failed" in log.read_text()

    await wait_for(stopped, timeout=30, what="strategy to stop on the refused publish")
    text = log.read_text()
    assert "PublishDenied" in text and "dlq.strategy.data_ready.X" in text
    assert "nats refused this service's user" in text
    await wait_for(lambda: _restarted(stack), timeout=30, what="the supervisor to see it exit")
    assert stack.supervisor.procs["strategy"].exits[0] == EXIT_FAILED
    assert await observe.dead_letters(nc.jsm()) == 0
    await stack.supervisor.stop("strategy")           # it fails each time it comes back: take it away
    del stack.supervisor.procs["strategy"]


async def _restarted(stack) -> bool:
    return stack.supervisor.procs["strategy"].restarts >= 1


async def test_redis_users_touch_only_their_own_keys(make_stack):
    stack, _ = await make_stack(services=())
    host = stack.redis_address
    async with Redis.from_url(f"redis://{host}/0") as anonymous:
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.ping()
    async with Redis.from_url(stack.redis_url_for("strategy")) as strategy:
        await strategy.set("tradeflow:done:strategy:e1", b"1")
        assert await strategy.mget(["tradeflow:done:strategy:e1"]) == [b"1"]
        await strategy.set("tradeflow:cache:regime:X", b"{}")
        for key in ("tradeflow:done:risk:e1", "other"):
            with pytest.raises(NoPermissionError):
                await strategy.get(key)
        with pytest.raises(NoPermissionError):
            await strategy.flushall()
        # the dedup registry runs scripts: they are held to the same keys
        assert await strategy.eval("return redis.call('HSET', KEYS[1], 'e2', '1')", 1,
                                   "tradeflow:done:strategy:20240102") == 1
        for key in ("tradeflow:done:risk:20240102", "other"):
            with pytest.raises((NoPermissionError, ResponseError)):
                await strategy.eval("return redis.call('HSET', KEYS[1], 'e2', '1')", 1, key)
        with pytest.raises((NoPermissionError, ResponseError)):   # a script naming no key may still touch none
            await strategy.eval("return redis.call('HSET', 'tradeflow:done:risk:x', 'e2', '1')", 0)
        with pytest.raises((NoPermissionError, ResponseError)):
            await strategy.script_flush()
    async with Redis.from_url(stack.redis_url) as admin:   # the cli user
        assert await admin.get("tradeflow:done:strategy:e1") == b"1"
