"""A real headless Chromium (Debian's, driven by Playwright) on the dashboard while bars flow:
the counters move, *pause* stops a stage, *resume* starts it again; after GOOG's daily bars the
equity curve spans 2004-2013 and the fills show their bars' dates. Screenshots are kept."""

from __future__ import annotations

import contextlib
import asyncio
import os
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from contracts.codec import decode
from contracts.subjects import PIPELINE_STREAM
from services.data.service import DataSettings, load_bars
from services.ops import observe
from services.ops.demo import wait_published
from services.ops.supervisor import http_json
from services.registry import DASHBOARD, SERVICES
from tests.integration.conftest import CONSUMERS, stream_messages
from tests.integration.test_pipeline import DATA_ENV
from tests.unit.test_backtesting_parity import PARITY_ENV

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TRADEFLOW_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root, without a sandbox; no background connections (this machine's network is closed)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@contextlib.asynccontextmanager
async def dashboard_page(stack):
    """The dashboard open in Chromium with the run's token, once its stream is live; the page's errors."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(stack.dashboard_url())
            await page.wait_for_selector("#connection:has-text('live')", timeout=15_000)
            yield page, errors
        finally:
            await browser.close()


async def acked(nc, consumer: str) -> int:
    return (await nc.jsm().consumer_info(PIPELINE_STREAM, consumer)).ack_floor.stream_seq


async def until(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


async def test_the_dashboard_shows_the_flow_and_pauses_and_resumes_a_stage(make_stack):
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: scripts/bootstrap installs it"
    paced = DATA_ENV | {"TRADEFLOW_DATA_RATE": "30"}    # 1,200 bars over 40 s: they flow all through the test
    stack, nc = await make_stack(services=(*SERVICES, DASHBOARD), per_service={"data": paced})
    async with dashboard_page(stack) as (page, errors):
        strategy = page.locator("[data-stage=strategy]")

        async def number(selector: str) -> float | None:
            text = (await page.locator(selector).inner_text()).replace(",", "")
            try:
                return float(text)
            except ValueError:
                return None

        # the counters move: bars published, strategy processing, events in the tail
        await until(lambda: _positive(number("[data-stage=data] [data-field=rate]")),
                    what="data's rate on the page")
        await until(lambda: _positive(number("[data-stage=strategy] [data-field=rate]")), what="strategy's rate")
        await until(lambda: _count(page, "#tail li", 5), what="events in the live tail")
        assert await page.locator("#services [data-service=strategy]").inner_text() == "up"

        # pause strategy: its consumer is paused, its count stops, the page says so
        await strategy.locator("button[data-action=pause]").click()
        await page.wait_for_selector("#message.ok:has-text('paused strategy')", timeout=10_000)
        assert (await nc.jsm().consumer_info(PIPELINE_STREAM, "strategy")).paused
        await page.wait_for_selector("[data-stage=strategy] [data-field=status]:has-text('paused')", timeout=10_000)

        async def nothing_in_flight() -> bool:   # what was delivered before the pause is done
            return (await nc.jsm().consumer_info(PIPELINE_STREAM, "strategy")).num_ack_pending == 0

        await until(nothing_in_flight, what="strategy to finish what it had before the pause")
        frozen = await acked(nc, "strategy")
        await asyncio.sleep(2.0)   # a while with nothing acked: that is what paused means
        assert await acked(nc, "strategy") == frozen, "strategy went on processing while paused"
        await until(lambda: _above(number("[data-stage=strategy] [data-field=pending]"), 0),
                    what="strategy's pending count to grow on the page")
        await page.screenshot(path=str(ARTIFACTS / "dashboard-paused.png"), full_page=True)

        # resume: it flows again
        await strategy.locator("button[data-action=resume]").click()
        await page.wait_for_selector("#message.ok:has-text('resumed strategy')", timeout=10_000)
        assert not (await nc.jsm().consumer_info(PIPELINE_STREAM, "strategy")).paused
        await until(lambda: _more(acked(nc, "strategy"), frozen), what="strategy to process again")
        await page.wait_for_selector("[data-stage=strategy] [data-field=status]:has-text('flowing')",
                                     timeout=10_000)
        await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # a control that cannot be done says so on the page
        await page.evaluate("""() => {   // in one go: the page redraws the flow every second
            const button = document.querySelector('[data-stage=strategy] button[data-action=pause]');
            button.dataset.target = 'nosuch';
            button.click();
        }""")
        await page.wait_for_selector("#message.error:has-text(\"404: no consumer 'nosuch'\")", timeout=10_000)
        assert not errors, errors
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_the_equity_curve_and_the_fills_are_in_event_time(make_stack):
    assert Path(CHROMIUM).exists(), "Debian's chromium is needed: scripts/bootstrap installs it"
    bars = load_bars(DataSettings(source="csv", files=["GOOG"]))   # daily, 2004-08-19 to 2013-03-01
    goog = {"TRADEFLOW_DATA_SOURCE": "csv", "TRADEFLOW_DATA_FILES": "GOOG"}   # as fast as the pipeline goes
    stack, nc = await make_stack(env=PARITY_ENV, per_service={"data": goog}, services=(*SERVICES, DASHBOARD))
    await wait_published(stack, timeout=120)
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=120)
    _, portfolio = await http_json(stack.http_port("audit"), "/v1/portfolio")
    assert portfolio["bars"] == len(bars) and portfolio["fills"] == 94
    _, curve = await http_json(stack.http_port("audit"), "/v1/equity")
    first, last = curve["points"][0], curve["points"][-1]
    assert curve["total"] == len(bars) and 100 < len(curve["points"]) <= 500
    assert first[0].startswith("2004-08-19") and last[0].startswith("2013-03-01")
    assert last[1] == portfolio["equity"]
    status, small = await http_json(stack.http_port("audit"), "/v1/equity?points=10")
    assert status == 200 and len(small["points"]) <= 10 and (small["points"][0], small["points"][-1]) == (first, last)
    for bad in ("3", "10001", "ten", "²"):
        assert (await http_json(stack.http_port("audit"), f"/v1/equity?points={bad}"))[0] == 400, bad
    fills = sorted((decode(m.subject, m.data, m.headers).event
                    for m in await stream_messages(nc, PIPELINE_STREAM, "executed_ready.>")), key=lambda f: f.ts)
    today = datetime.now(timezone.utc).date().isoformat()
    async with dashboard_page(stack) as (page, errors):
        # the whole curve, from audit: its x axis runs over event time, labelled with dates
        await page.wait_for_selector("#equity-axis span:last-child:has-text('2013-03-01')", timeout=15_000)
        labels = await page.locator("#equity-axis span").all_inner_texts()
        assert len(labels) == 5 and labels[0] == "2004-08-19" and labels[-1] == "2013-03-01", labels
        assert all(re.fullmatch(r"20(0[4-9]|1[0-3])-\d\d-\d\d", label) for label in labels), labels
        assert labels == sorted(labels)
        points = (await page.locator("#equity polyline").get_attribute("points") or "").split()
        assert len(points) == len(curve["points"])
        xs = [float(p.split(",")[0]) for p in points]
        assert xs[0] == 0 and xs[-1] == 600 and xs == sorted(xs)
        # the fills: the newest first, at its bar's date; when it arrived (today) only in the tooltip
        cell = page.locator("#fills tbody tr:first-child td:first-child span")
        shown = await cell.inner_text()
        assert shown == fills[-1].ts.date().isoformat() == "2012-12-03" and shown != today, shown
        assert (await cell.get_attribute("title") or "").startswith(f"arrived {today} ")
        assert await page.locator("#fills tbody tr").count() == 50
        years = {t[:4] for t in await page.locator("#fills tbody tr td:first-child").all_inner_texts()}
        assert years <= {str(y) for y in range(2004, 2014)}, years
        await page.screenshot(path=str(ARTIFACTS / "dashboard-goog.png"), full_page=True)
        assert not errors, errors
    assert (ARTIFACTS / "dashboard-goog.png").stat().st_size > 10_000


async def _positive(value) -> bool:
    v = await value
    return v is not None and v > 0


async def _above(value, floor: float) -> bool:
    v = await value
    return v is not None and v > floor


async def _more(value, than: int) -> bool:
    return await value > than


async def _count(page, selector: str, at_least: int) -> bool:
    return await page.locator(selector).count() >= at_least
