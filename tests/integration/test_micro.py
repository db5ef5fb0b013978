"""Every service answers the NATS micro protocol, and `tradeflow status` reads it with the streams and consumers."""

from __future__ import annotations

import json

import nats
import orjson
import pytest
from nats.errors import NoRespondersError

from services.ops import observe
from services.registry import SERVICES
from services.runtime.micro import micro_services
from services.runtime.permissions import inbox_prefix
from tests.integration.conftest import wait_for
from tests.integration.test_cli_and_http import BAR, tradeflow

pytestmark = pytest.mark.integration


async def test_every_service_answers_ping_info_and_stats_and_its_endpoints(make_stack):
    stack, nc = await make_stack()
    await nc.publish("data_ready.AAPL", json.dumps(BAR).encode())
    await nc.flush()
    pings = await micro_services(nc, 1.0, "PING")
    assert sorted(p["name"] for p in pings) == sorted(SERVICES)
    assert {p["version"] for p in pings} == {"0.1.0"} and all(p["type"] == "io.nats.micro.v1.ping_response"
                                                             for p in pings)
    for name in SERVICES:
        [info] = await micro_services(nc, 1.0, "INFO", name)
        assert info["name"] == name and info["description"]
        assert {e["name"]: e["subject"] for e in info["endpoints"]} == {
            "health": f"tradeflow.{name}.health", "ready": f"tradeflow.{name}.ready",
            "restart": f"tradeflow.{name}.restart",
            **({"portfolio": "tradeflow.audit.portfolio", "equity": "tradeflow.audit.equity"} if name == "audit"
               else {})}
        assert int(info["metadata"]["http_port"]) == stack.http_port(name)
        health = orjson.loads((await nc.request(f"tradeflow.{name}.health", b"", timeout=2)).data)
        assert health["service"] == name and "event_loop_lag" in health and "tasks" in health
        ready = orjson.loads((await nc.request(f"tradeflow.{name}.ready", b"\xff" * 1000, timeout=2)).data)
        assert ready["ready"] is True and all(ready["checks"].values())
    portfolio = orjson.loads((await nc.request("tradeflow.audit.portfolio", b"", timeout=5)).data)
    assert portfolio["equity"] == portfolio["cash"] and portfolio["trades"] == []
    curve = orjson.loads((await nc.request("tradeflow.audit.equity", b"", timeout=5)).data)
    assert curve["limit"] == 500 and curve["total"] == len(curve["points"])

    async def strategy_counted() -> bool:
        [stats] = await micro_services(nc, 1.0, "STATS", "strategy")
        return stats["endpoints"][0]["data"]["messages_in"] >= 1

    await wait_for(strategy_counted, what="strategy's micro stats to count the bar")
    [stats] = await micro_services(nc, 1.0, "STATS", "strategy")
    health_ep = next(e for e in stats["endpoints"] if e["name"] == "health")
    assert health_ep["num_requests"] >= 1 and health_ep["num_errors"] == 0
    # the dashboard's user may ask; a service's user may not answer for another service
    dash = await nats.connect(stack.nats_url_for("dashboard"), inbox_prefix=inbox_prefix("dashboard"))
    try:
        assert len(await micro_services(dash, 1.0, "PING")) == len(SERVICES)
        assert orjson.loads((await dash.request("tradeflow.risk.ready", b"", timeout=2)).data)["ready"]
    finally:
        await dash.close()
    with pytest.raises(NoRespondersError):
        await nc.request("tradeflow.nosuch.health", b"", timeout=1)


async def test_tradeflow_status_lists_services_consumers_streams_and_dead_letters(make_stack):
    stack, nc = await make_stack()
    await nc.publish("data_ready.AAPL", json.dumps(BAR).encode())
    await nc.publish("data_ready.AAPL", b"{broken")
    await nc.flush()

    async def dead_lettered() -> bool:
        return await observe.dead_letters(nc.jsm()) >= 1

    await wait_for(dead_lettered, what="the broken bar to be dead-lettered")
    env = {"NATS_URL": stack.nats_url}
    code, out, err = await tradeflow("status", env=env)
    assert code == 0, err
    for name in SERVICES:
        assert f"\n{name} " in out
    assert "consumers on PIPELINE" in out and "\nPIPELINE " in out and "strategy 1" in out.split("dead letters:")[1]
    code, out, err = await tradeflow("status", "--json", env=env)
    state = json.loads(out)
    assert sorted(s["name"] for s in state["services"]) == sorted(SERVICES)
    assert {c["name"] for c in state["consumers"]} >= {"strategy", "quant", "risk", "execution", "audit", "recorder"}
    takes = {c["name"]: c["consumes"] for c in state["consumers"]}   # what each takes, filtered or not
    assert takes["quant"] == "signals_ready.>" and takes["risk"] == "validated_ready.>,executed_ready.>,data_ready.>"
    assert state["dead_letters"]["strategy"] == 1   # every stage that reads bars dead-letters its copy
    assert next(s for s in state["streams"] if s["name"] == "PIPELINE")["messages"] >= 2


@pytest.mark.parametrize("args, message", [
    (["status", "--wait", "0"], "--wait"),
    (["status", "--wait", "abc"], "--wait"),
])
async def test_status_refuses_bad_options(args, message):
    code, _, err = await tradeflow(*args)
    assert code == 2 and message in err


async def test_status_without_a_server_is_a_one_line_error():
    code, _, err = await tradeflow("status", env={"NATS_URL": "nats://127.0.0.1:9"})
    assert code == 1 and err.strip().count("\n") == 0 and "Error" in err
