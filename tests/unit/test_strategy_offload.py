"""The strategy's features computed in the process pool give exactly what the process computes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from contracts.codec import Incoming
from contracts.errors import ConfigError, Rejected
from contracts.events import BarReceived
from services.data.sources import synthetic
from services.runtime.metrics import Metrics
from services.runtime.pool import ComputePool, PoolSettings
from services.strategy.service import StrategyAgent, build
from tests.unit.test_strategy import incoming

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


def bars_with_trouble() -> list[BarReceived]:
    """Five symbols' bars, with a repeated bar, one out of order and a gap too long for max_gap_seconds."""
    bars = synthetic(["AAA", "BBB", "CCC", "DDD", "EEE"], 300, seed=5)
    bars.insert(400, bars[390])                          # a duplicate of an earlier bar
    late = bars[700]
    bars.append(BarReceived(symbol="CCC", ts=late.ts - timedelta(minutes=30), open=10, high=10, low=10, close=10))
    gap_from = max(b.ts for b in bars)
    bars += [BarReceived(symbol="AAA", ts=gap_from + timedelta(days=3 + i), open=10 + i, high=11 + i, low=9 + i,
                         close=10 + i) for i in range(40)]
    return bars


def inputs(bars: list[BarReceived]) -> list[Incoming]:
    return [incoming(b) if i != 400 else Incoming(incoming(b).envelope.__replace__(id="dup"), b)  # distinct id
            for i, b in enumerate(bars)]


async def run(agent: StrategyAgent, batch: int) -> tuple[list, list[str]]:
    out, rejected = [], []
    items = inputs(bars_with_trouble())
    for start in range(0, len(items), batch):
        part = items[start:start + batch]
        await agent.prepare(part)
        for inc in part:
            try:
                out.extend(agent.handle(inc, NOW))
            except Rejected as err:
                rejected.append(f"{inc.id}: {err}")
    return out, rejected


@pytest.mark.parametrize("name", ["sma_cross", "rsi_reversion", "macd_cross"])
async def test_offloaded_features_are_bit_for_bit_those_of_the_process(name):
    env = {"TRADEFLOW_STRATEGY_NAME": name, "TRADEFLOW_STRATEGY_MAX_GAP_SECONDS": "86400"}
    inline = build(env | {"TRADEFLOW_STRATEGY_OFFLOAD": "off"})
    expected = await run(inline, 256)
    assert expected[0] and len(expected[1]) >= 3       # signals, and the duplicate, late and gapped bars rejected
    pool = ComputePool(PoolSettings(kind="process", workers=2), Metrics("strategy"))
    try:
        offloaded = build(env | {"TRADEFLOW_STRATEGY_OFFLOAD": "on"})
        offloaded.pool = pool
        assert await run(offloaded, 256) == expected
        assert offloaded.windows == inline.windows
        assert pool.stats()["ops"]["cpu:strategy"]["done"] >= 2 * (len(bars_with_trouble()) // 256)
    finally:
        await pool.close()


async def test_auto_offloads_only_a_batch_that_would_hold_the_loop_long_enough():
    pool = ComputePool(PoolSettings(kind="thread", workers=2), Metrics("strategy"))
    try:
        agent = build({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_OFFLOAD_MIN_MS": "1"})
        agent.pool = pool
        items = inputs(synthetic(["AAA", "BBB"], 400, seed=1))
        await agent.prepare(items[:10])
        assert not agent._ready                     # nothing measured yet: computed in the process
        for inc in items[:300]:
            agent.handle(inc, NOW)
        assert agent.cost is not None and agent.cost > 0   # measured; its value depends on the machine's load
        agent.cost = 0.0001                          # 0.1 ms a bar: one bar is under OFFLOAD_MIN_MS, 300 over
        await agent.prepare(items[300:301])
        assert not agent._ready                     # one bar: not worth a trip to the pool
        await agent.prepare(items[300:600])
        assert len(agent._ready) == 300
    finally:
        await pool.close()


async def test_a_failed_pool_falls_back_to_the_process_and_loses_nothing():
    pool = ComputePool(PoolSettings(kind="thread", workers=1), Metrics("strategy"))
    await pool.close()                              # every call now fails
    agent = build({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_OFFLOAD": "on"})
    agent.pool = pool
    inline = build({"TRADEFLOW_STRATEGY_NAME": "macd_cross", "TRADEFLOW_STRATEGY_OFFLOAD": "off"})
    assert await run(agent, 100) == await run(inline, 100)


async def test_a_precomputed_result_is_used_only_from_the_window_it_was_computed_from():
    pool = ComputePool(PoolSettings(kind="thread", workers=1), Metrics("strategy"))
    try:
        items = inputs(synthetic(["AAA"], 60, seed=2))
        agents = [build({"TRADEFLOW_STRATEGY_OFFLOAD": mode}) for mode in ("on", "off")]
        outputs = []
        for agent in agents:
            agent.pool = pool
            await agent.prepare(items)
            out = [agent.handle(inc, NOW) for inc in items[:40]]
            agent.windows["AAA"] = agent.windows["AAA"].__replace__(closes=())  # the window changed under it
            out += [agent.handle(inc, NOW) for inc in items[40:]]
            outputs.append(out)
        assert len(agents[0]._ready) == 0 and agents[0].windows == agents[1].windows
        assert outputs[0] == outputs[1]
    finally:
        await pool.close()


@pytest.mark.parametrize("env, message", [
    ({"TRADEFLOW_STRATEGY_OFFLOAD": "sometimes"}, "TRADEFLOW_STRATEGY_OFFLOAD"),
    ({"TRADEFLOW_STRATEGY_OFFLOAD_MIN_MS": "-1"}, "TRADEFLOW_STRATEGY_OFFLOAD_MIN_MS"),
    ({"TRADEFLOW_STRATEGY_OFFLOAD_MIN_MS": "soon"}, "TRADEFLOW_STRATEGY_OFFLOAD_MIN_MS"),
])
def test_bad_offload_settings_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        build(env)
