"""Polling providers on the task manager: every symbol at once, only new bars, failures isolated."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from aiohttp import web

from contracts.errors import ConfigError, Transient
from contracts.events import BarReceived
from services.data.polling import Poller, PollFailed, parse_every, parse_priorities
from services.data.providers import HttpProvider, ProviderError, SimulatedFeed, check_url, parse_answer
from services.data.service import DataAgent, DataSettings, build
from services.data.sources import synthetic
from services.runtime.market import MarketClock
from services.runtime.metrics import Metrics
from services.runtime.tasks import Every, Priority, TaskManager
from tests.local_http import serving
from tests.unit.test_tasks import EVENING, OPEN, SimClock

SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE"]


def series(symbols=SYMBOLS, bars=10) -> dict[str, list[BarReceived]]:
    out: dict[str, list[BarReceived]] = {}
    for bar in synthetic(symbols, bars, seed=3):
        out.setdefault(bar.symbol, []).append(bar)
    return out


class Sink:
    """A publish function that keeps what it was given and can be made to fail."""

    def __init__(self) -> None:
        self.published: list[BarReceived] = []
        self.fail = False

    async def __call__(self, bars: list[BarReceived]) -> None:
        if self.fail:
            self.published.extend(bars[: len(bars) // 2])    # half landed before the connection dropped
            raise Transient("publish: no PubAck")
        self.published.extend(bars)


def poller(feed, sink, **kw) -> Poller:
    return Poller(feed, sink, dict.fromkeys(feed.series, "important"), **kw)


async def test_a_poll_publishes_each_symbols_next_bars_in_time_order_and_never_twice():
    data = series()
    feed, sink = SimulatedFeed(data, per_poll=3), Sink()
    p = poller(feed, sink, metrics=Metrics("data"))
    assert await p.poll(SYMBOLS) == 15
    assert [b.ts for b in sink.published] == sorted(b.ts for b in sink.published)
    for _ in range(5):
        await p.poll(SYMBOLS)
    assert await p.poll(SYMBOLS) == 0    # the feed is exhausted: nothing more, nothing again
    assert sorted(sink.published, key=lambda b: (b.symbol, b.ts)) == [b for s in SYMBOLS for b in data[s]]
    assert all(f["published"] == 10 and f["failures"] == 0 for f in p.progress())
    assert all(feed.exhausted(s, p.feeds[s].last_ts) for s in SYMBOLS)


async def test_overlapping_answers_are_cut_to_what_is_new():
    class Overlapping(SimulatedFeed):
        async def bars(self, symbol, after):   # a provider that always answers its whole window
            return self.series[symbol]

    data = series(["AAA"], 6)
    sink = Sink()
    p = poller(Overlapping(data), sink)
    p.resume_from({"AAA": data["AAA"][2].ts})   # the stream holds the first three already
    await p.poll(["AAA"])
    await p.poll(["AAA"])
    assert sink.published == data["AAA"][3:]


async def test_every_symbol_of_a_tier_is_asked_at_once_up_to_the_concurrency_limit():
    feed = SimulatedFeed(series(), latency=0.05)
    await poller(feed, Sink()).poll(SYMBOLS)
    assert feed.peak_in_flight == 5
    feed = SimulatedFeed(series(), latency=0.01)
    await poller(feed, Sink(), concurrency=2).poll(SYMBOLS)
    assert feed.peak_in_flight == 2


async def test_a_failing_or_hanging_symbol_does_not_hold_up_the_others():
    class Flaky(SimulatedFeed):
        async def bars(self, symbol, after):
            if symbol == "BBB":
                raise ProviderError("BBB: HTTP 502 from http://feed/BBB")
            if symbol == "CCC":
                await asyncio.Event().wait()      # never answers
            return await super().bars(symbol, after)

    sink = Sink()
    p = poller(Flaky(series(), per_poll=2), sink, timeout=0.1, metrics=(metrics := Metrics("data")))
    assert await p.poll(SYMBOLS) == 6
    progress = {f["symbol"]: f for f in p.progress()}
    assert progress["BBB"]["last_error"] == "BBB: HTTP 502 from http://feed/BBB"
    assert progress["CCC"]["last_error"] == "CCC: no answer in 0.1s"
    assert progress["AAA"]["published"] == 2 and progress["AAA"]["last_error"] is None
    assert {b.symbol for b in sink.published} == {"AAA", "DDD", "EEE"}
    value = metrics.registry.get_sample_value
    assert value("tradeflow_data_polls_total", {"service": "data", "tier": "important", "outcome": "error"}) == 2
    assert value("tradeflow_data_polls_total", {"service": "data", "tier": "important", "outcome": "ok"}) == 3


async def test_a_round_where_every_symbol_fails_is_a_failed_run_that_backs_off():
    class Down(SimulatedFeed):
        async def bars(self, symbol, after):
            raise ProviderError(f"{symbol}: connection refused")

    tasks = TaskManager(MarketClock("24/7"), backoff=(0.05, 10.0))
    p = poller(Down(series()), Sink())
    with pytest.raises(PollFailed, match="every symbol failed"):
        await p.poll(SYMBOLS)
    p.register(tasks, {"important": Every(0.01, 0.01)})
    await tasks.start()
    await asyncio.sleep(0.3)
    [health] = tasks.health()
    await tasks.stop()
    assert health.name == "poll-important" and health.priority == "important"
    assert 2 <= health.runs <= 3 and health.restarts >= 1    # 10 ms interval, but the backoff rules
    assert health.last_error.startswith("PollFailed: every symbol failed (5): AAA: connection refused")


async def test_after_a_failed_publish_the_stream_is_asked_where_each_symbol_ends():
    data = series(["AAA", "BBB"], 8)
    sink = Sink()
    asked = []

    async def resync(symbols):   # what the stream holds: exactly what the sink got
        asked.append(list(symbols))
        last = {}
        for bar in sink.published:
            last[bar.symbol] = max(last.get(bar.symbol, bar.ts), bar.ts)
        return last

    p = Poller(SimulatedFeed(data, per_poll=4), sink, {"AAA": "critical", "BBB": "critical"}, resync=resync)
    sink.fail = True
    with pytest.raises(Transient):
        await p.poll(["AAA", "BBB"])
    sink.fail = False
    await p.poll(["AAA", "BBB"])
    await p.poll(["AAA", "BBB"])
    assert asked == [["AAA", "BBB"]]
    assert sorted(sink.published, key=lambda b: (b.symbol, b.ts)) == data["AAA"] + data["BBB"]


@pytest.mark.parametrize("when, tier, delay, state", [
    (OPEN, "critical", 1, "idle"), (EVENING, "critical", 30, "idle"),
    (OPEN, "nice", 30, "idle"), (EVENING, "nice", (datetime(2024, 7, 8, 13, 30) - datetime(2024, 7, 5, 22)).seconds
                                 + 2 * 86_400, "paused"),
])
def test_each_tier_polls_at_its_interval_for_the_market_phase(when, tier, delay, state):
    agent = DataAgent(DataSettings(source="synthetic", mode="poll", symbols=["AAA", "BBB"], bars=5,
                                   priorities=[f"AAA={tier}", "BBB=important"]))
    tasks = TaskManager(MarketClock("NYSE", now=SimClock(when)))
    names = Poller(agent.provider(), Sink(), agent.tiers).register(tasks, agent.schedules)
    assert sorted(names) == sorted([f"poll-{tier}", "poll-important"])
    assert tasks._periodic[f"poll-{tier}"].priority == {"critical": Priority.CRITICAL,
                                                         "nice": Priority.NICE_TO_HAVE}[tier]
    assert tasks._delay(tasks._periodic[f"poll-{tier}"]) == (pytest.approx(delay), state)


@pytest.mark.parametrize("env, message", [
    ({"TRADEFLOW_DATA_PRIORITIES": "AAPL=urgent"}, "not SYMBOL=tier"),
    ({"TRADEFLOW_DATA_PRIORITIES": "AAPL"}, "not SYMBOL=tier"),
    ({"TRADEFLOW_DATA_PRIORITIES": "TSLA=critical"}, "not one of the polled symbols"),
    ({"TRADEFLOW_DATA_POLL_CRITICAL": "0,5"}, "TRADEFLOW_DATA_POLL_CRITICAL: interval in_session=0"),
    ({"TRADEFLOW_DATA_POLL_IMPORTANT": "-1,off"}, "TRADEFLOW_DATA_POLL_IMPORTANT: interval"),
    ({"TRADEFLOW_DATA_POLL_NICE": "fast,off"}, "TRADEFLOW_DATA_POLL_NICE: could not convert"),
    ({"TRADEFLOW_DATA_POLL_NICE": "5"}, "give two intervals"),
    ({"TRADEFLOW_DATA_POLL_NICE": "5,6,7"}, "give two intervals"),
    ({"TRADEFLOW_DATA_POLL_NICE": "nan,off"}, "interval in_session=nan"),
    ({"TRADEFLOW_DATA_MODE": "stream"}, "unknown mode 'stream'"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "http://feed/{symbol}",
      "TRADEFLOW_DATA_MODE": "batch"}, "an http source is polled"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "http://feed/bars"}, "takes {symbol}"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "file:///etc/{symbol}"}, "not an http"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "http://h/{symbol.__class__}"}, "takes {symbol}"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "http://h/{symbol}/{key}"}, "not \\['key'\\]"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "http://h/{symbol"}, "not a URL template"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": ""}, "not an http"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "http://h/{symbol}",
      "TRADEFLOW_DATA_SYMBOLS": "AAPL,bad symbol"}, "not a valid symbol"),
    ({"TRADEFLOW_DATA_SOURCE": "http", "TRADEFLOW_DATA_URL": "http://h/{symbol}", "TRADEFLOW_DATA_SYMBOLS": ""},
     "no symbols to poll"),
    ({"TRADEFLOW_DATA_POLL_TIMEOUT": "0"}, "TRADEFLOW_DATA_POLL_TIMEOUT"),
    ({"TRADEFLOW_DATA_POLL_CONCURRENCY": "0"}, "TRADEFLOW_DATA_POLL_CONCURRENCY"),
    ({"TRADEFLOW_DATA_LATENCY": "-1"}, "TRADEFLOW_DATA_LATENCY"),
])
def test_bad_poll_settings_stop_the_data_service_at_start_up(env, message):
    env = {"TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_MODE": "poll", **env}
    with pytest.raises(ConfigError, match=message):
        build(env)


def test_the_token_is_not_in_the_settings_repr():
    settings = DataSettings(source="http", url="http://feed/{symbol}", token="s3cret")
    assert "s3cret" not in repr(settings) and "token='***'" in repr(settings)


def test_parse_every_and_priorities():
    assert parse_every("X", ["0.5", "OFF"]) == Every(0.5, None)
    assert parse_priorities(["aapl=Critical"], ["AAPL", "MSFT"]) == {"AAPL": "critical", "MSFT": "important"}


T0 = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


def wire(n: int, symbol: str | None = None, start: datetime = T0) -> list[dict]:
    return [{"ts": (start + timedelta(minutes=i)).isoformat(), "open": 10, "high": 11, "low": 9, "close": 10.5,
             "volume": 100, **({"symbol": symbol} if symbol else {})} for i in range(n)]


def test_an_answer_is_a_list_of_bars_or_an_object_holding_one():
    assert [b.ts for b in parse_answer("AAA", orjson.dumps(wire(3)[::-1]))] == [T0 + timedelta(minutes=i)
                                                                               for i in range(3)]
    assert len(parse_answer("AAA", orjson.dumps({"bars": wire(2, "aaa"), "next": "x"}))) == 2
    assert parse_answer("AAA", b"[]") == []


@pytest.mark.parametrize("body, message", [
    (b"<html>502 Bad Gateway</html>", "not a list of bars"),
    (b'{"error": "rate limited"}', "not a list of bars"),
    (b"", "not a list of bars"),
    (b"[" * 100_000, "not a list of bars"),
    (orjson.dumps(wire(1, "EVIL")), "bar 0 is for 'EVIL'"),
    (orjson.dumps([{**wire(1)[0], "high": 8}]), "bar 0 at .* is not a valid bar: high 8.0 is below low 9.0"),
    (orjson.dumps([{**wire(1)[0], "close": -1}]), "not a valid bar"),
    (orjson.dumps([{**wire(1)[0], "ts": "2024-01-02T14:30:00"}]), "without a timezone"),
    (orjson.dumps([{**wire(1)[0], "ts": "yesterday"}]), "not a list of bars"),
    (orjson.dumps([{**wire(1)[0], "open": "1e999"}]), "not a list of bars"),
    (orjson.dumps(wire(1) + [{**wire(1)[0], "close": 10.7}]), "two different bars at"),
    (b'[{"ts": 1, "open": 1}]', "not a list of bars"),
])
def test_a_malformed_or_hostile_answer_is_an_error_naming_what_is_wrong(body, message):
    with pytest.raises(ProviderError, match=message):
        parse_answer("AAA", body)


@pytest.fixture
async def feed_server():
    """A real HTTP provider on loopback: /bars/{symbol}?after=... plus misbehaving endpoints."""
    bars = wire(5)
    seen = []

    async def good(request: web.Request) -> web.Response:
        seen.append(request)
        after = request.query.get("after")
        chosen = [b for b in bars if not after or datetime.fromisoformat(b["ts"]) > datetime.fromisoformat(after)]
        return web.json_response(chosen[:2])

    async def error(_):
        return web.Response(status=503, text="maintenance")

    async def huge(_):
        return web.Response(body=b"[" + b" " * (3 * 2**20) + b"]", content_type="application/json")

    async def endless(request):   # chunked, no length: the provider must stop reading on its own
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b"[")
        for _ in range(10_000):
            await response.write(b" " * 65_536)
        return response

    async def slow(_):
        await asyncio.sleep(5)
        return web.json_response([])

    async def redirect(_):
        raise web.HTTPFound("http://169.254.169.254/latest")

    async with serving(web.get("/bars/{symbol}", good), web.get("/error/{symbol}", error),
                       web.get("/huge/{symbol}", huge), web.get("/endless/{symbol}", endless),
                       web.get("/slow/{symbol}", slow), web.get("/redirect/{symbol}", redirect)) as base:
        yield base, seen


async def test_the_http_provider_pages_by_time_and_sends_its_token(feed_server):
    base, seen = feed_server
    provider = HttpProvider(f"{base}/bars/{{symbol}}?after={{after}}", token="t0k")
    sink = Sink()
    p = Poller(provider, sink, {"AAA": "critical"})
    try:
        for _ in range(4):
            await p.poll(["AAA"])
    finally:
        await provider.close()
    assert [b.ts for b in sink.published] == [T0 + timedelta(minutes=i) for i in range(5)]
    assert seen[0].query["after"] == "" and seen[1].query["after"] == (T0 + timedelta(minutes=1)).isoformat()
    assert seen[0].headers["Authorization"] == "Bearer t0k"


@pytest.mark.parametrize("path, message", [
    ("error", "AAA: HTTP 503 from http://127.0.0.1"),
    ("huge", "AAA: answer of 3,145,730 bytes, more than 1,048,576"),
    ("endless", "AAA: answer longer than 1,048,576 bytes"),
    ("slow", "AAA: TimeoutError"),
    ("redirect", "HTTP 302"),
    ("missing", "HTTP 404"),
])
async def test_the_http_provider_turns_a_bad_answer_into_an_error_for_that_symbol(feed_server, path, message):
    base, _ = feed_server
    provider = HttpProvider(f"{base}/{path}/{{symbol}}", timeout=0.3, max_bytes=2**20)
    try:
        with pytest.raises(ProviderError, match=message):
            await provider.bars("AAA", None)
    finally:
        await provider.close()


async def test_an_unreachable_provider_is_an_error_not_a_crash():
    provider = HttpProvider("http://127.0.0.1:9/{symbol}", timeout=2)
    try:
        with pytest.raises(ProviderError, match="AAA: ClientConnectorError"):
            await provider.bars("AAA", None)
    finally:
        await provider.close()


def test_check_url_accepts_a_template_with_symbol_and_after():
    assert check_url("https://feed.example/v1/bars/{symbol}?since={after}&limit=500")
