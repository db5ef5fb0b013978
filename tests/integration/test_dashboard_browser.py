"""A real headless Chromium (Debian's, driven by Playwright) on the dashboard while bars flow:
the counters move, *pause* stops a stage, *resume* starts it again; a screenshot is kept."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from contracts.subjects import PIPELINE_STREAM
from services.registry import DASHBOARD, SERVICES
from tests.integration.test_pipeline import DATA_ENV

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TRADEFLOW_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root, without a sandbox; no background connections (this machine's network is closed)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(stack.dashboard_url())
            await page.wait_for_selector("#connection:has-text('live')", timeout=15_000)
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
        finally:
            await browser.close()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


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
