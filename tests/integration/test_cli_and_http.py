"""The CLI against a live deployment, bad CLI arguments, and each service's HTTP endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.ops.supervisor import http_json
from services.registry import SERVICES
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration
BAR = {"symbol": "AAPL", "ts": "2024-01-02T14:30:00Z", "open": 10, "high": 11, "low": 9, "close": 10.5, "volume": 5}


async def tradeflow(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_publish_and_tail_against_a_live_pipeline(make_stack):
    stack, nc = await make_stack()
    env = {"NATS_URL": stack.nats_url}
    tail = asyncio.create_task(tradeflow("tail", "data_ready.>", "--count", "1", env=env))

    async def tail_subscribed() -> bool:   # nats-server's monitoring lists the tail's subscription
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{stack.ports['nats-monitor']}/subsz?subs=1") as r:
            subs = (await r.json()).get("subscriptions_list") or []
        return any(sub.get("subject") == "data_ready.>" for sub in subs)

    await wait_for(tail_subscribed, what="tail to subscribe")
    code, out, err = await tradeflow("publish", "data_ready.AAPL", json.dumps(BAR), "--id", "cli-1", env=env)
    assert code == 0, err
    assert "stream PIPELINE seq 1" in out
    code, out, _ = await tradeflow("publish", "data_ready.AAPL", json.dumps(BAR), "--id", "cli-1", env=env)
    assert "(duplicate)" in out
    code, _, err = await tradeflow("publish", "--no-check", "nowhere.AAPL", "{}", env=env)
    assert code == 1 and "no response from stream" in err and "Traceback" not in err
    huge = "data_ready.AAPL", "--no-check", "-"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.cli", "publish", *huge,
                                                env={**os.environ, **env}, stdin=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(b'{"pad": "' + b"x" * 2_000_000 + b'"}')
    assert proc.returncode == 1 and b"maximum payload exceeded" in err and b"Traceback" not in err
    code, tailed, err = await tail
    assert code == 0, err
    line = json.loads(tailed.splitlines()[0])
    assert line["subject"] == "data_ready.AAPL" and line["id"] == "cli-1" and line["event"]["close"] == 10.5

    async def audited() -> bool:
        return (await http_json(stack.http_port("audit"), "/v1/portfolio"))[1]["bars"] == 1

    await wait_for(audited, what="the published bar to reach audit")


@pytest.mark.parametrize("args, message", [
    pytest.param(["publish", "data_ready.AAPL", "{nope"], "not sent: malformed JSON", id="publish-bad-json"),
    pytest.param(["publish", "data_ready.AAPL", json.dumps({**BAR, "symbol": "MSFT"})], "does not match subject",
                 id="publish-mismatch"),
    pytest.param(["publish", "nowhere.AAPL", json.dumps(BAR)], "belongs to no pipeline stage", id="publish-subject"),
    pytest.param(["publish", "data_ready.AAPL", json.dumps(BAR)], "cannot reach NATS", id="publish-no-server"),
    pytest.param(["run", "bogus"], "'bogus' is not one of", id="run-unknown-service"),
    pytest.param(["demo", "--data", "NOPE"], "unknown data set 'NOPE'", id="demo-unknown-data"),
    pytest.param(["demo", "--data", "X=/nonexistent.csv"], "cannot open", id="demo-missing-file"),
    pytest.param(["demo", "--timeout", "0"], "not in the range", id="demo-timeout"),
    pytest.param(["tail", "--count", "-1"], "not in the range", id="tail-count"),
])
async def test_bad_arguments_give_a_one_line_error(args, message):
    code, out, err = await tradeflow(*args, env={"NATS_URL": "nats://127.0.0.1:1", "TRADEFLOW_BATCH_SIZE": "1"})
    assert code != 0
    assert message in err
    assert "Traceback" not in err + out


async def test_bad_service_setting_names_the_variable():
    code, _, err = await tradeflow("run", "strategy", env={"TRADEFLOW_STRATEGY_FAST": "30"})
    assert code == 1 and "fast (30) must be shorter than slow (20)" in err and "Traceback" not in err
    code, _, err = await tradeflow("run", "quant", env={"TRADEFLOW_BATCH_SIZE": "zero"})
    assert code == 1 and "TRADEFLOW_BATCH_SIZE" in err


async def test_every_service_serves_health_readiness_and_prometheus_metrics(make_stack):
    stack, nc = await make_stack()
    await nc.publish("data_ready.AAPL", json.dumps(BAR).encode())
    await nc.publish("data_ready.AAPL", b"{broken")
    await nc.flush()

    async def counted() -> bool:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{stack.http_port('strategy')}/metrics") as r:
                return 'tradeflow_dead_letters_total{reason="undecodable",service="strategy"} 1.0' in await r.text()

    await wait_for(counted, what="strategy's metrics to count the dead letter")
    for name in SERVICES:
        port = stack.http_port(name)
        assert await http_json(port, "/healthz") == (200, {"service": name, "status": "ok"})
        status, ready = await http_json(port, "/readyz")
        assert status == 200 and ready["ready"] and all(ready["checks"].values()), ready
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            async with s.get(f"http://127.0.0.1:{port}/nope") as r:
                assert r.status == 404
            async with s.post(f"http://127.0.0.1:{port}/readyz", data=b"x" * 1_000_000) as r:
                assert r.status == 405   # refused before the body is read
            async with s.get(f"http://127.0.0.1:{port}/metrics?" + "a=1&" * 2000, headers={"X-Junk": "y" * 7000}) as r:
                assert r.status == 200   # junk within the limits is ignored
            async with s.get(f"http://127.0.0.1:{port}/metrics?" + "a=1&" * 3000) as r:
                assert r.status == 400   # beyond them, refused: a request line or a header over 8,190 bytes
            async with s.get(f"http://127.0.0.1:{port}/metrics", headers={"X-Junk": "y" * 9000}) as r:
                assert r.status == 400
        assert (await http_json(port, "/healthz"))[0] == 200, f"{name} hurt by hostile requests"
        families = {f.name for f in text_string_to_metric_families(text)}
        assert {"tradeflow_messages_in", "tradeflow_messages_out", "tradeflow_processing_seconds",
                "tradeflow_event_loop_lag_seconds", "tradeflow_dead_letters", "tradeflow_build_info",
                "process_cpu_seconds"} <= families, name

        async def sampled(port: int = port) -> bool:   # the first lag sample comes 100 ms after the start
            return (await http_json(port, "/v1/health"))[1]["event_loop_lag"]["samples"] > 0

        await wait_for(sampled, timeout=10, what=f"{name}'s first event-loop lag sample")
        status, health = await http_json(port, "/v1/health")
        assert status == 200 and health["service"] == name and health["uptime_s"] > 0
        assert health["process"]["rss_mb"] > 10 and health["process"]["cpu_seconds"] > 0
        lag = health["event_loop_lag"]
        assert lag["samples"] > 0 and 0 <= lag["p50_ms"] <= lag["p95_ms"] <= lag["p99_ms"] <= lag["max_ms"]
        tasks = {t["name"]: t for t in health["tasks"]}
        assert tasks["redis-ping"]["runs"] > 0 and tasks["redis-ping"]["failures"] == 0
        assert ("consumer-lag" in tasks) == (name != "data")
        assert health["market"] == {"calendar": "XNYS", "used": False}
        assert set(health["cache"]) == {"namespace", "available", "in_flight", "kinds"}
        assert health["pool"]["kind"] == "process" and health["pool"]["in_flight"] == 0
    # readiness follows Redis: stop it and strategy (which needs its dedup registry) says not ready
    await stack.supervisor.stop("redis-server")

    async def not_ready() -> bool:
        status, body = await http_json(stack.http_port("strategy"), "/readyz")
        return status == 503 and body["checks"]["redis"] is False

    await wait_for(not_ready, what="/readyz to report Redis down")

    async def ping_failing() -> bool:
        tasks = {t["name"]: t for t in (await http_json(stack.http_port("strategy"), "/v1/health"))[1]["tasks"]}
        return tasks["redis-ping"]["failures"] > 0 and tasks["redis-ping"]["last_error"] is not None

    await wait_for(ping_failing, what="/v1/health to show the Redis check failing")


async def start_up(tmp_path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, list[str]]:
    """`tradeflow up` on free ports under `tmp_path`, once it has said it is up; and what it printed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "up", "--home", str(tmp_path / "up"), "--nats-port", "0",
        "--redis-port", "0", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []
    try:
        while not any("Ctrl-C" in line for line in lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()
            assert line, f"up exited early: {(await proc.stderr.read()).decode()[-2000:]}"
            lines.append(line)
    except BaseException:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 60)
        raise
    return proc, lines


async def test_up_serves_the_pipeline_and_sigterm_stops_everything(tmp_path):
    proc, lines = await start_up(tmp_path, {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL")})
    try:
        nats_url = next(w for line in lines for w in line.split() if w.startswith("nats://"))
        audit_port = int(next(line for line in lines if line.strip().startswith("audit")).split(":")[-1].split("/")[0])
        code, _, err = await tradeflow("publish", "data_ready.AAPL", json.dumps(BAR), env={"NATS_URL": nats_url})
        assert code == 0, err

        async def audited() -> bool:
            return (await http_json(audit_port, "/v1/portfolio"))[1]["bars"] == 1

        await wait_for(audited, what="the bar to reach audit")
        # the dashboard is up, its URL printed with the run's token
        url = next(w for line in lines if line.strip().startswith("Dashboard") for w in line.split() if "#token=" in w)
        base, token = url.split("/#token=")
        async with aiohttp.ClientSession() as s:
            async with s.get(base + "/") as r:
                assert r.status == 200 and "/static/app.js" in await r.text()
            async with s.get(base + "/v1/state") as r:
                assert r.status == 401

            async def dashboard_sees_every_service() -> bool:
                async with s.get(base + "/v1/state", headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200
                    state = await r.json()
                return state["ready"] and {x["name"] for x in state["services"]} >= set(SERVICES)

            await wait_for(dashboard_sees_every_service, what="the dashboard's state of every service")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    stopped = {log.stem for log in (tmp_path / "up" / "logs").glob("*.log") if "service stopped" in log.read_text()}
    assert stopped >= {*SERVICES, "dashboard"}, stopped   # every service said it stopped


async def test_up_takes_a_polled_feed_from_the_environment_as_run_data_does(tmp_path):
    """Without --data, `up`'s data service reads TRADEFLOW_DATA_* (here a synthetic feed, polled), says where
    its bars come from, and the pipeline trades on them."""
    from tests.integration.test_pipeline import LOGIC_ENV

    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL")} | LOGIC_ENV | {
        "TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_MODE": "poll", "TRADEFLOW_DATA_SYMBOLS": "AAPL,MSFT",
        "TRADEFLOW_DATA_BARS": "300", "TRADEFLOW_DATA_SEED": "11", "TRADEFLOW_DATA_PER_POLL": "25",
        "TRADEFLOW_DATA_POLL_IMPORTANT": "0.1,0.1", "TRADEFLOW_CALENDAR": "24/7"}
    proc, lines = await start_up(tmp_path, env)
    try:
        assert any(line.split() == ["Data", "synthetic", "(seed", "11),", "polled:", "2", "symbol(s)", "(AAPL,",
                                    "MSFT)"] for line in lines), lines
        audit_port = int(next(line for line in lines if line.strip().startswith("audit")).split(":")[-1].split("/")[0])

        async def filled() -> bool:
            return (await http_json(audit_port, "/v1/portfolio"))[1]["fills"] > 0

        await wait_for(filled, timeout=120, what="fills from the polled feed")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
    assert code == 0
    assert "polled" in (tmp_path / "up" / "logs" / "data.log").read_text()


async def test_demo_prints_the_backtest_and_writes_the_audit_log(tmp_path):
    from tests.unit.test_backtesting_parity import backtesting_py_sma_cross

    stats = backtesting_py_sma_cross()
    code, out, err = await tradeflow("demo", "--home", str(tmp_path / "demo"), timeout=240)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert lines["fills"].split()[1] == "94" and lines["trades"].split()[1] == str(len(stats._trades)) == "93"
    assert f"{stats['Equity Final [$]']:,.2f}" in lines["equity"]
    assert lines["dead"].split()[-1] == "0"
    assert f"{tmp_path / 'demo' / 'audit' / 'audit.jsonl'} (94 fills, 93 trades)" in lines["audit"]
    assert f"{tmp_path / 'demo' / 'recorder' / 'events.sqlite'} (2,524 events)" in lines["event"]

    # what-if over the recorded run: the same logic reproduces it; other parameters give the backtest's result
    home = {"TRADEFLOW_DATA_DIR": str(tmp_path / "demo")}
    code, out, err = await tradeflow("whatif", "--check", env=home, timeout=120)
    assert code == 0, out + err
    assert "no differences: the logic reproduces the recorded history" in out and "56,263.52" in out
    code, out, err = await tradeflow("whatif", "--param", "fast=5", "--param", "slow=30", "--json", "--check",
                                     env=home, timeout=120)
    assert code == 1, err
    diff = json.loads(out)
    code, backtest, err = await tradeflow("backtest", "--data", "GOOG", "--param", "fast=5", "--param", "slow=30",
                                          "--json", timeout=120)
    predicted = json.loads(backtest)
    assert diff["after"]["equity"] == pytest.approx(predicted["final_equity"], rel=1e-12)
    assert diff["after"]["trades"] == len(predicted["trades"]) and diff["before"]["equity"] == pytest.approx(56263.52)
    assert not diff["identical"] and diff["stages"][0]["added"] > 0 and diff["stages"][0]["removed"] > 0
    code, out, err = await tradeflow("whatif", "--since", "2030-01-01", env=home)
    assert code == 1 and "no data_ready events in" in err and len(err.strip().splitlines()) == 1
    code, out, err = await tradeflow("whatif", "--set", "TRADEFLOW_RISK_MAX_POSITON=5", env=home)
    assert code == 1 and "TRADEFLOW_RISK_MAX_POSITON" in err
