"""backtesting.py's classic SMA crossover on GOOG, through the six live services, gives its trades and equity."""

from __future__ import annotations

import pytest

from contracts.codec import decode
from contracts.subjects import PIPELINE_STREAM
from services.ops import observe
from services.ops.demo import wait_published
from services.ops.supervisor import http_json
from tests.integration.conftest import CONSUMERS, stream_messages
from tests.unit.test_backtesting_parity import PARITY_ENV, backtesting_py_sma_cross

pytestmark = pytest.mark.integration


async def test_live_pipeline_matches_backtesting_py_on_goog(make_stack):
    stats = backtesting_py_sma_cross()
    stack, nc = await make_stack(env=PARITY_ENV, per_service={"data": {"TRADEFLOW_DATA_SOURCE": "csv",
                                                                      "TRADEFLOW_DATA_FILES": "GOOG"}})
    await wait_published(stack, timeout=120)
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=120)
    fills = sorted((decode(m.subject, m.data, m.headers).event
                    for m in await stream_messages(nc, PIPELINE_STREAM, "executed_ready.>")), key=lambda f: f.ts)
    assert len(fills) == len(stats._trades) + 1 == 94
    for i, trade in enumerate(stats._trades.itertuples()):
        assert (fills[i].ts.date(), fills[i].price) == (trade.EntryTime.date(), trade.EntryPrice), f"trade {i} entry"
        assert (fills[i + 1].ts.date(), fills[i + 1].price) == (trade.ExitTime.date(), trade.ExitPrice), (
            f"trade {i} exit")
    _, portfolio = await http_json(stack.http_port("audit"), "/v1/portfolio")
    assert portfolio["equity"] == pytest.approx(stats["Equity Final [$]"], rel=1e-9)
    assert await observe.dead_letters(nc.jsm()) == 0
