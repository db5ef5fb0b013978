"""The data service polling its provider on the task manager, as a live service on real NATS and Redis."""

from __future__ import annotations

import signal
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web

from contracts.codec import decode
from contracts.subjects import PIPELINE_STREAM
from services.ops.supervisor import http_json
from tests.integration.conftest import stream_messages, wait_for
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, assert_matches_prediction, predicted
from tests.local_http import serving

pytestmark = pytest.mark.integration

# each symbol's 400 bars come 20 a poll every 0.1 s, 50 ms a call. One tier: every round publishes the
# three symbols' next bars in time order, as the batch mode and the prediction have them (symbols in
# tiers polled at different rates arrive in the order they are polled, and audit's equity curve follows it)
POLL_ENV = DATA_ENV | {"TRADEFLOW_DATA_MODE": "poll", "TRADEFLOW_DATA_PER_POLL": "20", "TRADEFLOW_DATA_LATENCY": "0.05",
                       "TRADEFLOW_DATA_PRIORITIES": "AAPL=critical,MSFT=critical,BRK.B=critical",
                       "TRADEFLOW_DATA_POLL_CRITICAL": "0.1,30", "TRADEFLOW_CALENDAR": "24/7"}


@pytest.mark.faults   # the restart must land mid-stream
async def test_a_polled_feed_restarted_mid_stream_gives_what_the_pure_logic_predicts(make_stack):
    _, sim, _ = predicted(LOGIC_ENV)
    stack, nc = await make_stack(env=LOGIC_ENV, per_service={"data": POLL_ENV})

    async def halfway() -> bool:
        _, progress = await http_json(stack.http_port("data"), "/v1/progress")
        return progress["published"] >= 300

    await wait_for(halfway, what="the data service to poll some bars")
    _, health = await http_json(stack.http_port("data"), "/v1/health")
    tasks = {t["name"]: t for t in health["tasks"]}
    assert tasks["poll-critical"]["priority"] == "critical" and tasks["poll-critical"]["runs"] > 3
    assert tasks["poll-critical"]["failures"] == 0 and "poll-important" not in tasks
    assert health["market"]["phase"] == "in_session"
    assert await stack.restart_service("data", signal.SIGTERM) == 0
    _, progress = await http_json(stack.http_port("data"), "/v1/progress")
    assert progress["mode"] == "poll" and not progress["done"], "the restart did not happen mid-stream"
    await assert_matches_prediction(stack, nc, sim)   # every bar once, every stage as predicted
    _, progress = await http_json(stack.http_port("data"), "/v1/progress")
    assert {f["symbol"]: f["last_error"] for f in progress["symbols"]} == {"AAPL": None, "BRK.B": None, "MSFT": None}


async def test_an_http_provider_is_polled_and_a_failing_symbol_does_not_stop_the_others(make_stack):
    start = datetime(2024, 3, 1, 14, 30, tzinfo=timezone.utc)
    served: dict[str, int] = {"AAA": 3, "BBB": 3}   # bars each symbol has so far; the feed grows while polled

    async def bars(request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if symbol == "BAD":
            return web.Response(status=500, text="upstream down")
        if request.headers.get("Authorization") != "Bearer feed-token":
            return web.Response(status=401)
        after = request.query.get("after")
        out = [{"ts": (start + timedelta(minutes=i)).isoformat(), "open": 10 + i, "high": 11 + i, "low": 9 + i,
                "close": 10.5 + i, "volume": 100} for i in range(served[symbol])]
        return web.json_response([b for b in out if not after or b["ts"] > after])

    async with serving(web.get("/v1/bars/{symbol}", bars)) as base:
        env = {"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_SYMBOLS": "AAA,BBB,BAD",
               "TRADEFLOW_DATA_URL": f"{base}/v1/bars/{{symbol}}?after={{after}}",
               "TRADEFLOW_DATA_TOKEN": "feed-token", "TRADEFLOW_DATA_POLL_IMPORTANT": "0.1,0.1",
               "TRADEFLOW_CALENDAR": "24/7"}
        stack, nc = await make_stack(per_service={"data": env}, services=("data",))

        async def published(n: int) -> bool:
            return len(await stream_messages(nc, PIPELINE_STREAM, "data_ready.>")) == n

        await wait_for(lambda: published(6), what="the first bars of AAA and BBB")
        served["AAA"] = 7
        await wait_for(lambda: published(10), what="AAA's new bars")

        async def polls(symbol: str) -> int:
            _, progress = await http_json(stack.http_port("data"), "/v1/progress")
            return next(f["polls"] for f in progress["symbols"] if f["symbol"] == symbol)

        before = await polls("AAA")

        async def polled_again() -> bool:   # more polls: nothing new, nothing again
            return await polls("AAA") >= before + 3

        await wait_for(polled_again, what="three more polls of AAA")
        events = [decode(m.subject, m.data, m.headers) for m in
                  await stream_messages(nc, PIPELINE_STREAM, "data_ready.>")]
        assert sorted((e.event.symbol, e.event.ts) for e in events) == sorted(
            [("AAA", start + timedelta(minutes=i)) for i in range(7)]
            + [("BBB", start + timedelta(minutes=i)) for i in range(3)])
        _, progress = await http_json(stack.http_port("data"), "/v1/progress")
        feeds = {f["symbol"]: f for f in progress["symbols"]}
        assert feeds["BAD"]["published"] == 0 and feeds["BAD"]["failures"] > 1
        assert feeds["BAD"]["last_error"].startswith("BAD: HTTP 500 from http://127.0.0.1")
        assert feeds["AAA"]["published"] == 7 and feeds["AAA"]["last_error"] is None
        assert "feed-token" not in (stack.logs / "data.log").read_text()
