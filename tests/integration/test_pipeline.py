"""The six services as separate processes on real NATS and Redis produce exactly what the pure logic predicts."""

from __future__ import annotations

import signal
from datetime import datetime

import msgspec
import nats
import orjson
import pytest

from contracts.codec import decode
from contracts.subjects import PIPELINE_STREAM
from services import registry
from services.audit import trail
from services.audit.logic import report
from services.data.service import DataSettings, load_bars
from services.offline.simulate import simulate
from services.ops import observe
from services.ops.demo import audit_trail_location, wait_published
from services.ops.supervisor import http_json
from services.risk.service import book_view
from services.runtime.settings import load
from tests.integration.conftest import CONSUMERS, stream_messages, wait_for

pytestmark = pytest.mark.integration

# Limits tight enough that quant and risk both reject some signals.
LOGIC_ENV = {
    "TRADEFLOW_STRATEGY_FAST": "5",
    "TRADEFLOW_STRATEGY_SLOW": "12",
    "TRADEFLOW_QUANT_MIN_STRENGTH": "0.15",
    "TRADEFLOW_RISK_ORDER_QUANTITY": "10",
    "TRADEFLOW_RISK_MAX_ORDER_NOTIONAL": "2500",
    "TRADEFLOW_EXECUTION_COMMISSION_RATE": "0.001",
    "TRADEFLOW_EXECUTION_MIN_COMMISSION": "1",
}
DATA_ENV = {"TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_SYMBOLS": "AAPL,MSFT,BRK.B",
            "TRADEFLOW_DATA_BARS": "400", "TRADEFLOW_DATA_SEED": "11"}


def predicted(env: dict[str, str]):
    """What the pure logic says the pipeline must produce for DATA_ENV."""
    bars = load_bars(load(DataSettings, "TRADEFLOW_DATA_", DATA_ENV))
    agents = {name: registry.build(name, env) for name in CONSUMERS}
    return bars, simulate(bars, **agents), agents


async def assert_counts_and_portfolio(stack, nc, sim, timeout: float = 120) -> dict:
    """Once every bar is published and every consumer drained: each stage's count and audit's portfolio are
    the prediction's; the portfolio."""
    await wait_published(stack, timeout=timeout)
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=timeout)
    counts = observe.stage_totals(await observe.subject_counts(nc.jsm()))
    assert {k: v for k, v in counts.items() if v} == dict(sim.counts)
    _, portfolio = await stack.get("audit", "/v1/portfolio")
    assert portfolio == msgspec.json.decode(msgspec.json.encode(report(sim.audit.report())))
    return portfolio


async def assert_matches_prediction(stack, nc, sim) -> None:
    portfolio = await assert_counts_and_portfolio(stack, nc, sim)
    fills = [decode(m.subject, m.data, m.headers).event
             for m in await stream_messages(nc, PIPELINE_STREAM, "executed_ready.>")]
    order_ids = [f.order_id for f in fills]
    assert len(order_ids) == len(set(order_ids)), "an order was filled twice"
    assert await observe.dead_letters(nc.jsm()) == 0
    # the audit log holds each fill once, with its event id, and each closed trade once
    lines = await trail.read(audit_trail_location(stack))
    assert len({line["id"] for line in lines}) == len(lines)
    fill_ids = {decode(m.subject, m.data, m.headers).id
                for m in await stream_messages(nc, PIPELINE_STREAM, "executed_ready.>")}
    assert {line["id"] for line in lines if line["type"] == "fill"} == fill_ids
    trades = [line for line in lines if line["type"] == "trade"]
    exits = sorted(datetime.fromisoformat(t["exit_time"]) for t in trades)
    assert exits == sorted(datetime.fromisoformat(t["exit_time"]) for t in portfolio["trades"])


async def test_every_stage_matches_the_pure_logic(make_stack):
    bars, sim, _ = predicted(LOGIC_ENV)
    assert sim.counts["rejected.quant"] > 0 and sim.counts["rejected.risk"] > 0 and sim.counts["executed_ready"] > 5
    stack, nc = await make_stack(env=LOGIC_ENV, per_service={"data": DATA_ENV})
    await assert_matches_prediction(stack, nc, sim)
    assert sim.counts["data_ready"] == len(bars) == 1200


RUN_FIELDS = ("trace_id", "causation_id", "logged_at")   # the live run's own: its traces, its clock


def by_id(lines: list[dict]) -> dict[str, dict]:
    """Each line by its id, without what only the live run can know."""
    return {line["id"]: {k: v for k, v in line.items() if k not in RUN_FIELDS} for line in lines}


async def test_an_audit_trail_in_postgresql_holds_the_predicted_lines_once_across_a_restart(make_stack, pg_url):
    _, sim, _ = predicted(LOGIC_ENV)
    stack, nc = await make_stack(env=LOGIC_ENV, per_service={"data": DATA_ENV,
                                                             "audit": {"TRADEFLOW_AUDIT_LOG": pg_url}})
    await assert_matches_prediction(stack, nc, sim)
    held = await trail.read(pg_url)
    assert len(held) == len(sim.audit.lines) and by_id(held) == by_id(sim.audit.lines)   # the fills and trades
    assert not (stack.home / "audit" / trail.DEFAULT_FILE).exists()
    assert await stack.supervisor.stop("audit", signal.SIGTERM) == 0
    await stack.start_service("audit")   # its state rebuilt from the stream: every line derived again
    # a bar only audit records anything for (strategy needs more than one), so it writes what it re-derived
    await nc.jetstream().publish("data_ready.ZZZ", orjson.dumps(
        {"symbol": "ZZZ", "ts": "2030-01-02T14:30:00Z", "open": 10, "high": 11, "low": 9, "close": 10.5,
         "volume": 1000}))
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=60)
    assert await trail.read(pg_url) == held


@pytest.mark.faults   # the restart must land mid-stream: a paced feed against the services' speed
@pytest.mark.parametrize("service", ["strategy", "risk", "execution", "audit"])
async def test_restart_mid_stream_loses_nothing_and_fills_nothing_twice(make_stack, service):
    _, sim, _ = predicted(LOGIC_ENV)
    paced = DATA_ENV | {"TRADEFLOW_DATA_RATE": "250"}  # ~5 s of bars, so the restart lands mid-stream
    stack, nc = await make_stack(env=LOGIC_ENV, per_service={"data": paced})

    async def some_processed() -> bool:
        info = await nc.jsm().consumer_info(PIPELINE_STREAM, service)
        return info.ack_floor.stream_seq > 200

    await wait_for(some_processed, what=f"{service} to process some events")
    code = await stack.supervisor.stop(service, signal.SIGTERM)
    assert code == 0, f"{service} did not exit 0 on SIGTERM"
    _, progress = await http_json(stack.http_port("data"), "/v1/progress")
    assert not progress["done"], "the stop did not happen mid-stream; slow the feed down"
    await stack.start_service(service)
    await assert_matches_prediction(stack, nc, sim)


@pytest.mark.faults
async def test_nats_server_killed_and_restarted_mid_stream_loses_nothing(make_stack):
    _, sim, _ = predicted(LOGIC_ENV)
    # acks sent while the server was down are lost; ack_wait decides how soon those messages come back
    env = LOGIC_ENV | {"TRADEFLOW_ACK_WAIT": "3"}
    stack, nc = await make_stack(env=env, per_service={"data": DATA_ENV | {"TRADEFLOW_DATA_RATE": "300"}})

    async def some_processed() -> bool:
        return (await nc.jsm().consumer_info(PIPELINE_STREAM, "audit")).ack_floor.stream_seq > 200

    await wait_for(some_processed, what="audit to process some events")
    await nc.close()
    await stack.supervisor.restart("nats-server", signal.SIGKILL)  # same port, same store directory
    nc = await nats.connect(stack.nats_url)
    try:
        _, progress = await http_json(stack.http_port("data"), "/v1/progress")
        assert not progress["done"], "the outage did not happen mid-stream; slow the feed down"
        await assert_matches_prediction(stack, nc, sim)
    finally:
        await nc.close()


async def test_risk_killed_mid_run_rebuilds_the_book_it_had(make_stack):
    _, sim, agents = predicted(LOGIC_ENV)
    expected_book = book_view(agents["risk"].book)
    # a killed service waits ack_wait for what it held unacked: keep it short
    stack, nc = await make_stack(env=LOGIC_ENV | {"TRADEFLOW_ACK_WAIT": "3"},
                                 per_service={"data": DATA_ENV | {"TRADEFLOW_DATA_RATE": "400"}})

    async def some_processed() -> bool:
        return (await nc.jsm().consumer_info(PIPELINE_STREAM, "risk")).ack_floor.stream_seq > 200

    await wait_for(some_processed, what="risk to process some events")
    assert await stack.restart_service("risk", signal.SIGKILL) == -signal.SIGKILL
    await assert_matches_prediction(stack, nc, sim)
    _, book = await http_json(stack.http_port("risk"), "/v1/book")
    assert book == expected_book
    # and once more at rest: killed and restarted, it comes back with exactly the book it had
    await stack.restart_service("risk", signal.SIGKILL)
    assert (await http_json(stack.http_port("risk"), "/v1/book"))[1] == book


async def test_strategy_features_folded_in_the_process_pool_match_the_pure_logic(make_stack):
    env = LOGIC_ENV | {"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_OFFLOAD": "on"}
    _, sim, _ = predicted(env)
    assert sim.counts["executed_ready"] > 5
    stack, nc = await make_stack(env=env, per_service={"data": DATA_ENV})
    await assert_matches_prediction(stack, nc, sim)
    _, health = await http_json(stack.http_port("strategy"), "/v1/health")
    assert health["pool"]["kind"] == "process" and health["pool"]["ops"]["cpu:strategy"]["done"] > 0
    assert health["pool"]["ops"]["cpu:strategy"]["failed"] == 0
