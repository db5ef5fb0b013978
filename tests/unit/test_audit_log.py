"""The audit log (a real file): a line per fill and per closed trade, never twice, durable before the ack."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from contracts.codec import Incoming
from contracts.envelope import Envelope
from contracts.errors import ConfigError
from contracts.events import OrderFilled
from services.audit import trail
from services.audit.service import AuditAgent, AuditSettings
from services.audit.trail import AuditLog
from services.runtime.agent import AgentContext

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


def fill_in(n: int, side: str, quantity: float, price: float) -> Incoming:
    fill = OrderFilled(symbol="GOOG", ts=TS + timedelta(days=n), order_id=f"o-{n}", side=side, quantity=quantity,
                       price=price, commission=1.0)
    env = Envelope(id=f"fill-{n}", type="tradeflow.order.filled", source="execution", time=fill.ts,
                   subject="executed_ready.GOOG", trace_id=f"{n:032x}", causation_id=f"order-{n}")
    return Incoming(env, fill)


async def open_agent(tmp_path) -> AuditAgent:
    agent = AuditAgent(AuditSettings(cash=10_000))
    await agent.open(AgentContext(cache=None, data_dir=tmp_path, metrics=None))
    return agent


async def test_fills_and_closed_trades_are_logged_with_their_event_ids(tmp_path):
    agent = await open_agent(tmp_path)
    for inc in (fill_in(1, "buy", 10, 100.0), fill_in(2, "sell", 20, 110.0), fill_in(3, "buy", 10, 105.0)):
        agent.handle(inc, TS)
    await agent.record()
    lines = trail.read(tmp_path / "audit.jsonl")
    assert [(line["type"], line["id"]) for line in lines] == [
        ("fill", "fill-1"), ("fill", "fill-2"), ("trade", "fill-2:trade:0"), ("fill", "fill-3"),
        ("trade", "fill-3:trade:0")]
    assert (lines[0]["trace_id"], lines[0]["causation_id"], lines[0]["order_id"]) == ("1".zfill(32), "order-1", "o-1")
    # long 10 from 100 closed at 110: 100 less a commission of 1 in and 0.5 (half the reversal) out
    assert (lines[2]["size"], lines[2]["entry_price"], lines[2]["exit_price"], lines[2]["pnl"]) == (
        10.0, 100.0, 110.0, 98.5)
    assert (lines[4]["size"], lines[4]["pnl"]) == (-10.0, 50 - 0.5 - 1.0)   # short 10 from 110 closed at 105


async def test_a_redelivered_fill_or_a_restart_adds_no_line(tmp_path):
    agent = await open_agent(tmp_path)
    agent.handle(fill_in(1, "buy", 10, 100.0), TS)
    agent.handle(fill_in(2, "sell", 10, 110.0), TS)
    await agent.record()
    restarted = await open_agent(tmp_path)   # rebuilt from history: the same fills again, and one new
    for inc in (fill_in(1, "buy", 10, 100.0), fill_in(2, "sell", 10, 110.0), fill_in(3, "buy", 5, 90.0)):
        restarted.handle(inc, TS)
    await restarted.record()
    assert [line["id"] for line in trail.read(tmp_path / "audit.jsonl")] == [
        "fill-1", "fill-2", "fill-2:trade:0", "fill-3"]


async def test_a_batch_rolled_back_before_it_was_recorded_leaves_no_line(tmp_path):
    agent = await open_agent(tmp_path)
    agent.handle(fill_in(1, "buy", 10, 100.0), TS)
    snapshot = agent.snapshot()
    agent.handle(fill_in(2, "sell", 10, 110.0), TS)
    agent.restore(snapshot)                   # the batch failed: it will be redelivered
    await agent.record()
    assert [line["id"] for line in trail.read(tmp_path / "audit.jsonl")] == ["fill-1"]
    agent.handle(fill_in(2, "sell", 10, 110.0), TS)   # the redelivery closes the trade once
    await agent.record()
    assert [line["id"] for line in trail.read(tmp_path / "audit.jsonl")][1:] == ["fill-2", "fill-2:trade:0"]


async def test_a_line_torn_by_a_crash_is_cut_and_written_again(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = await AuditLog.open(path)
    await log.append([{"id": "a", "type": "fill"}])
    with path.open("ab") as fh:
        fh.write(b'{"id": "b", "ty')           # the process died mid-write
    log = await AuditLog.open(path)
    assert await log.append([{"id": "a"}, {"id": "b", "type": "fill"}]) == 1
    assert [line["id"] for line in trail.read(path)] == ["a", "b"]


@pytest.mark.parametrize("content", [b"not json\n", b'["a list"]\n', b'{"no": "id"}\n', b"\xff\xfe\n"],
                         ids=["not-json", "not-an-object", "no-id", "binary"])
async def test_a_foreign_file_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(orjson.dumps({"id": "a"}) + b"\n" + content)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"audit log .*line 2 is not an audit record"):
        await AuditLog.open(path)
    assert path.read_bytes() == before


async def test_an_unwritable_log_is_a_clear_error(tmp_path):
    (tmp_path / "taken").write_text("a file where the directory should be")
    with pytest.raises(ConfigError, match="audit log"):
        await AuditLog.open(tmp_path / "taken" / "audit.jsonl")
