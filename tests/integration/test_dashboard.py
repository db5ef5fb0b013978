"""The dashboard's API against a live pipeline: its snapshot, its controls, and hostile requests."""

from __future__ import annotations

import json

import aiohttp
import orjson
import pytest
from nats.js.errors import NotFoundError

from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM
from services.ops import observe
from services.registry import DASHBOARD, SERVICES
from services.runtime.micro import micro_services
from tests.integration.conftest import wait_for
from tests.integration.test_cli_and_http import BAR

pytestmark = pytest.mark.integration


async def call(stack, method: str, path: str, body=None, token: str | None = "stack", raw: bytes | None = None):
    headers = {} if token is None else {
        "Authorization": f"Bearer {stack.dashboard_token if token == 'stack' else token}"}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"http://127.0.0.1:{stack.http_port(DASHBOARD)}{path}", headers=headers,
                             data=raw if raw is not None else (orjson.dumps(body) if body is not None else None)) as r:
            text = await r.text()
            return r.status, (json.loads(text) if r.content_type == "application/json" else text)


async def test_the_snapshot_controls_and_hostile_requests(make_stack):
    stack, nc = await make_stack(services=(*SERVICES, DASHBOARD))
    jsm = nc.jsm()
    await nc.publish("data_ready.AAPL", json.dumps(BAR).encode())
    await nc.publish("data_ready.AAPL", b"{broken")
    await nc.flush()

    async def state_has_it() -> bool:
        status, state = await call(stack, "GET", "/v1/state")
        return (status == 200 and state.get("ready") and state["dead_letters"]["total"] >= 1
                and all(s["up"] for s in state["services"]) and state["portfolio"] is not None)

    await wait_for(state_has_it, what="the dashboard to see every service and the dead letter")
    _, state = await call(stack, "GET", "/v1/state")
    assert [s["name"] for s in state["stages"]] == ["data", "strategy", "quant", "risk", "execution", "audit"]
    assert ({s["name"] for s in state["services"]} == {*SERVICES, DASHBOARD}
            and all(s["ready"] for s in state["services"]))
    assert {(d["service"], d["reason"]) for d in state["dead_letters"]["by"]} >= {("strategy", "undecodable")}
    assert state["portfolio"]["equity"] == 100000

    # no token, a wrong one, malformed and hostile requests: 4xx, nothing done
    for token in (None, "wrong", ""):
        assert (await call(stack, "GET", "/v1/state", token=token))[0] == 401
        assert (await call(stack, "POST", "/v1/control", {"action": "pause", "target": "all"}, token=token))[0] == 401
        assert (await call(stack, "GET", "/v1/stream", token=token))[0] == 401
    bad = [(b"{not json", 400, "not JSON"), (b"[1, 2]", 400, "JSON object"), (b'"pause"', 400, "JSON object"),
           (orjson.dumps({"action": "explode"}), 400, "unknown action"),
           (orjson.dumps({"action": "pause", "target": "nosuch"}), 404, "no consumer 'nosuch'"),
           (orjson.dumps({"action": "pause", "target": ["strategy"]}), 404, "no consumer"),
           (orjson.dumps({"action": "restart", "target": "nosuch"}), 404, "no running service"),
           (orjson.dumps({"action": "restart"}), 404, "no running service"),
           (orjson.dumps({"action": "redrive"}), 400, "needs seq"),
           (orjson.dumps({"action": "redrive", "seq": "1"}), 400, "needs seq"),
           (orjson.dumps({"action": "redrive", "seq": True}), 400, "needs seq"),
           (orjson.dumps({"action": "redrive", "seq": 999999}), 404, "no dead letter 999999"),
           (orjson.dumps({"action": "pause", "target": "x" * 5000}), 413, "at most 4096 bytes"),
           (b"\x00\xff" * 100, 400, "not JSON")]
    for raw, status, message in bad:
        got, answer = await call(stack, "POST", "/v1/control", raw=raw)
        assert (got, answer["ok"]) == (status, False) and message in answer["error"], (raw[:60], got, answer)
    async def chunks(*parts: bytes):   # a chunked body: no Content-Length to refuse it by
        for part in parts:
            yield part

    headers = {"Authorization": f"Bearer {stack.dashboard_token}"}
    async with aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{stack.http_port(DASHBOARD)}/v1/control"
        async with s.post(url, data=chunks(*[b" " * 1000] * 10), headers=headers) as r:
            assert r.status == 413
        async with s.post(url, data=chunks(b'{"action": "pause",', b' "target": "nosuch"}'), headers=headers) as r:
            assert r.status == 404 and "no consumer 'nosuch'" in (await r.json())["error"]
    for query in ("symbol=not%20a%20symbol", "subject=a..b", "subject=%3E.a", "subject=" + "a" * 300,
                  "symbol=" + "A" * 40):
        assert (await call(stack, "GET", f"/v1/stream?{query}"))[0] == 400, query
    assert not any(c.paused for c in await jsm.consumers_info(PIPELINE_STREAM)), "a refused request paused something"
    assert (await call(stack, "GET", "/healthz", token=None))[0] == 200

    # pause and resume one stage, then all
    status, answer = await call(stack, "POST", "/v1/control", {"action": "pause", "target": "risk"})
    assert status == 200 and answer["message"] == "paused risk"
    assert (await jsm.consumer_info(PIPELINE_STREAM, "risk")).paused
    assert (await call(stack, "POST", "/v1/control",
                       {"action": "resume", "target": "risk"}))[1]["message"] == "resumed risk"
    assert not (await jsm.consumer_info(PIPELINE_STREAM, "risk")).paused
    status, answer = await call(stack, "POST", "/v1/control", {"action": "pause", "target": "all"})
    assert status == 200 and {c.name for c in await jsm.consumers_info(PIPELINE_STREAM) if c.paused} == {
        "strategy", "quant", "risk", "execution", "audit"}    # the recorder goes on recording
    await call(stack, "POST", "/v1/control", {"action": "resume", "target": "all"})
    assert not any(c.paused for c in await jsm.consumers_info(PIPELINE_STREAM))

    # redrive: the letter goes back to its subject (and, still broken, comes back once more, redriven once)
    seq = next(x["seq"] for x in state["dead_letters"]["latest"] if x["service"] == "strategy")
    status, answer = await call(stack, "POST", "/v1/control", {"action": "redrive", "seq": seq})
    assert status == 200 and answer["message"].startswith(f"redrove {seq} to data_ready.AAPL (stream seq ")
    with pytest.raises(NotFoundError):   # out of the DLQ once its redrive is stored
        await jsm.get_msg(DLQ_STREAM, seq)

    async def back_in_dlq() -> bool:
        letters = await observe.stream_messages(nc, DLQ_STREAM, "dlq.strategy.>")
        return any((m.headers or {}).get("tradeflow-redrive-count") == "1" for m in letters)

    await wait_for(back_in_dlq, what="the redriven letter to be dead-lettered again")

    # restart: the service exits 75, comes back under a new id, and the dashboard counts it
    [before] = await micro_services(nc, 0.5, "PING", "quant")
    status, answer = await call(stack, "POST", "/v1/control", {"action": "restart", "target": "quant"})
    assert status == 200 and answer["message"].startswith("restarting quant")

    async def restarted() -> bool:
        pings = await micro_services(nc, 0.5, "PING", "quant")
        return len(pings) == 1 and pings[0]["id"] != before["id"]

    await wait_for(restarted, what="quant to come back")

    async def counted() -> bool:
        _, state = await call(stack, "GET", "/v1/state")
        return next(s for s in state["services"] if s["name"] == "quant")["restarts"] == 1

    await wait_for(counted, what="the dashboard to count the restart")
