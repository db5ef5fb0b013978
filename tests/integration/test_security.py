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
from services.ops import observe
from services.runtime.config import RuntimeSettings
from services.runtime.permissions import inbox_prefix
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

    prefix = "_INBOX" if user == "injector" else inbox_prefix(user)   # a service user receives only on its own
    nc = await nats.connect(stack.nats_url_for(user), error_cb=on_error, allow_reconnect=False, inbox_prefix=prefix)
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


SERVICES = ("data", "strategy", "quant", "risk", "execution", "audit", "recorder")
CONSUMERS_ALL = ("strategy", "quant", "risk", "execution", "audit", "recorder")
ACK = "1.1.1.1733054400000000000.0"   # the tail of an ack subject: delivered, stream and consumer seq, time, pending


def forbidden(user: str) -> list[tuple[str, str]]:
    """(what, API or pipeline subject) a user must be refused: every administrative operation, and every
    cross-service one (another's consumer, acks, outputs, dead letters)."""
    other = "risk" if user == "execution" else "execution"
    ops = [(f"delete stream {s}", f"$JS.API.STREAM.DELETE.{s}") for s in (PIPELINE_STREAM, DLQ_STREAM, "ADVISORIES")]
    ops += [(f"purge stream {s}", f"$JS.API.STREAM.PURGE.{s}") for s in (PIPELINE_STREAM, DLQ_STREAM)]
    ops += [("update stream PIPELINE", f"$JS.API.STREAM.UPDATE.{PIPELINE_STREAM}"),
            ("create a consumer", f"$JS.API.CONSUMER.CREATE.{PIPELINE_STREAM}.intruder"),
            ("create or reset another's consumer", f"$JS.API.CONSUMER.CREATE.{PIPELINE_STREAM}.{other}"),
            ("create a durable (old API)", f"$JS.API.CONSUMER.DURABLE.CREATE.{PIPELINE_STREAM}.{other}"),
            ("delete another's consumer", f"$JS.API.CONSUMER.DELETE.{PIPELINE_STREAM}.{other}"),
            ("delete another's advisories", f"$JS.API.CONSUMER.DELETE.ADVISORIES.{other}-advisories"),
            ("ack another consumer's message", f"$JS.ACK.{PIPELINE_STREAM}.{other}.{ACK}"),
            ("take another's messages", f"$JS.API.CONSUMER.MSG.NEXT.{PIPELINE_STREAM}.{other}"),
            ("delete a message", f"$JS.API.STREAM.MSG.DELETE.{PIPELINE_STREAM}"),
            ("publish another's dead letter", f"dlq.{other}.data_ready.X")]
    if user != "dashboard":
        ops.append(("pause another's consumer", f"$JS.API.CONSUMER.PAUSE.{PIPELINE_STREAM}.{other}"))
    if user in SERVICES:
        ops.append(("read another's consumer", f"$JS.API.CONSUMER.INFO.{PIPELINE_STREAM}.{other}"))
    if user in SERVICES:
        ops += [("publish another's output", subject) for owner, subject in OWN.items() if owner != user]
    return ops


async def test_no_service_user_can_touch_what_others_depend_on_while_the_pipeline_runs(make_stack):
    """Every service user, the dashboard's and the injector's try every administrative and cross-service
    operation while the pipeline runs on the same server: each is refused, streams and consumers are as
    they were, and the pipeline still produces what the pure logic predicts."""
    from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, assert_matches_prediction, predicted

    _, sim, _ = predicted(LOGIC_ENV)
    stack, admin = await make_stack(env=LOGIC_ENV, per_service={"data": DATA_ENV})
    jsm = admin.jsm()
    consumers_before = {c.name: c.config for c in await jsm.consumers_info(PIPELINE_STREAM)}
    assert set(consumers_before) == set(CONSUMERS_ALL)
    for user in (*SERVICES, "dashboard", "injector"):
        nc, errors = await connect_as(stack, user)
        try:
            ops = forbidden(user)
            for _what, subject in ops:
                with pytest.raises((nats.errors.TimeoutError, asyncio.TimeoutError)):
                    await nc.request(subject, b"{}", timeout=0.3)
            inbox = f"_INBOX_{'risk' if user == 'audit' else 'audit'}.>"   # another user's replies
            for pattern in {"dashboard": ("_INBOX.>", inbox, "$JS.ACK.>"),
                            "injector": (inbox, "$JS.ACK.>", "$JS.API.>")}.get(
                                user, ("data_ready.>", "_INBOX.>", inbox, "$JS.ACK.>")):
                await nc.subscribe(pattern)
                ops.append((f"subscribe to {pattern}", pattern))
            await nc.flush()

            async def all_refused(errors=errors, ops=ops) -> bool:
                return all(any(f'"{subject.lower()}"' in e.lower() for e in errors) for _, subject in ops)

            await wait_for(all_refused, timeout=10, what=f"{user}: a refusal for each operation")
        finally:
            await nc.close()
    await assert_matches_prediction(stack, admin, sim)
    durables_after = {c.name: c.config for c in await jsm.consumers_info(PIPELINE_STREAM) if c.config.durable_name}
    assert durables_after == consumers_before   # the test's own reads of the stream made ephemeral ones
    for name in durables_after:
        assert not (await jsm.consumer_info(PIPELINE_STREAM, name)).paused, name
    assert (await jsm.stream_info("ADVISORIES")).config.name == "ADVISORIES"


async def _has(errors: list[str], n: int) -> bool:
    return sum("permissions violation" in e.lower() for e in errors) >= n


async def test_a_service_with_the_wrong_user_stops_loudly(make_stack):
    """strategy run with quant's user: at start-up, one line naming what NATS refused, and a non-zero exit
    (not a wait for an answer that never comes)."""
    stack, nc = await make_stack(services=("strategy",))
    stack.per_service_env["strategy"] = {"NATS_URL": stack.nats_url_for("quant")}
    await stack.restart_service("strategy", signal.SIGTERM, wait=False)
    await wait_for(lambda: _restarted(stack), timeout=30, what="strategy to exit at start-up")
    assert stack.supervisor.procs["strategy"].exits[0] == 1
    text = (stack.logs / "strategy.log").read_text()
    [line] = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert "NATS refuses this service's user" in line and "_inbox_strategy" in line.lower()   # its inbox, named
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
        await strategy.set("tradeflow:done:{strategy}:e1", b"1")
        assert await strategy.mget(["tradeflow:done:{strategy}:e1"]) == [b"1"]
        await strategy.set("tradeflow:done:strategy:e0", b"1")   # the layout before the hash tag: moved at an upgrade
        await strategy.set("tradeflow:cache:{regime}:X", b"{}")
        for key in ("tradeflow:done:{risk}:e1", "tradeflow:done:risk:e1", "other"):
            with pytest.raises(NoPermissionError):
                await strategy.get(key)
        with pytest.raises(NoPermissionError):
            await strategy.flushall()
        # the dedup registry runs its script by hash (EVALSHA, loaded with SCRIPT LOAD): held to the same keys
        hset = strategy.register_script("return redis.call('HSET', KEYS[1], 'e2', '1')")
        assert await hset(keys=["tradeflow:done:{strategy}:20240102"]) == 1
        for key in ("tradeflow:done:{risk}:20240102", "other"):
            with pytest.raises((NoPermissionError, ResponseError)):
                await hset(keys=[key])
        stray = strategy.register_script("return redis.call('HSET', 'tradeflow:done:{risk}:x', 'e2', '1')")
        with pytest.raises((NoPermissionError, ResponseError)):   # a script naming no key may still touch none
            await stray(keys=[])
        with pytest.raises(NoPermissionError):   # EVAL of a script text is not a service's to run
            await strategy.eval("return 1", 0)
        with pytest.raises((NoPermissionError, ResponseError)):
            await strategy.script_flush()
    async with Redis.from_url(stack.redis_url) as admin:   # the cli user
        assert await admin.get("tradeflow:done:{strategy}:e1") == b"1"
