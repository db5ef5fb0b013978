"""Partitioned replicas of the per-symbol stages: the pipeline's output is what one replica of each makes."""

from __future__ import annotations

import msgspec
import pytest

from contracts.codec import decode
from contracts.events import SignalGenerated
from contracts.subjects import PIPELINE_STREAM
from services.audit.logic import report
from services.ops import observe
from services.ops.demo import wait_published
from services.ops.supervisor import http_json
from tests.integration.conftest import stream_messages
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, predicted

pytestmark = pytest.mark.integration

SYMBOLS = tuple(DATA_ENV["TRADEFLOW_DATA_SYMBOLS"].split(","))


async def test_strategy_and_quant_replicas_share_the_symbols_and_match_the_prediction(make_stack):
    bars, sim, _ = predicted(LOGIC_ENV)
    stack, nc = await make_stack(env=LOGIC_ENV, per_service={"data": DATA_ENV},
                                 replicas={"strategy": 2, "quant": 2}, symbols=SYMBOLS)
    assert {"strategy-p0of2", "strategy-p1of2", "quant-p0of2", "quant-p1of2"} <= set(stack.durables)
    await wait_published(stack, timeout=120)
    await observe.wait_drained(nc.jsm(), stack.durables, timeout=120)
    counts = observe.stage_totals(await observe.subject_counts(nc.jsm()))
    assert {k: v for k, v in counts.items() if v} == dict(sim.counts)
    signals = sorted((e.symbol, e.ts, e.side) for e in (
        decode(m.subject, m.data, m.headers).event
        for m in await stream_messages(nc, PIPELINE_STREAM, "signals_ready.>")))
    assert signals == sorted((e.symbol, e.ts, e.side) for _, e in sim.events if isinstance(e, SignalGenerated))
    _, portfolio = await http_json(stack.http_port("audit"), "/v1/portfolio")
    assert portfolio == msgspec.json.decode(msgspec.json.encode(report(sim.audit.report())))
    # each strategy replica was given its own symbols' bars, every bar went to exactly one of them
    delivered = {name: (await nc.jsm().consumer_info(PIPELINE_STREAM, name)).delivered.consumer_seq
                 for name in ("strategy-p0of2", "strategy-p1of2")}
    per_symbol = {s: sum(1 for b in bars if b.symbol == s) for s in SYMBOLS}
    owned = {0: sorted(SYMBOLS)[0::2], 1: sorted(SYMBOLS)[1::2]}
    assert delivered == {f"strategy-p{i}of2": sum(per_symbol[s] for s in owned[i]) for i in (0, 1)}
    assert await observe.dead_letters(nc.jsm()) == 0
