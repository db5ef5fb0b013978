"""`tradeflow demo`: a whole deployment, real bars through it, a summary, a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nats

from contracts.subjects import (
    APPROVED_READY,
    DATA_READY,
    EXECUTED_READY,
    SIGNALS_READY,
    VALIDATED_READY,
)
from replay.store.location import parse_location
from services.audit import trail
from services.execution.ledger import SETTING as LEDGER
from services.ops import observe
from services.ops.stack import Stack
from services.registry import DURABLES
from services.runtime.store import open_event_store


Progress = Callable[[str, int, int], None]   # (what, done, total): "publishing" bars, then "draining" events


async def wait_published(stack: Stack, timeout: float, progress: Progress | None = None) -> dict:
    """Wait until the data service has published every bar; its progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, published = await stack.get("data", "/v1/progress")
        if progress is not None:
            progress("publishing", published.get("published", 0), published.get("bars", 0))
        if published.get("done"):
            return published
        await asyncio.sleep(0.2)
    raise TimeoutError(f"data service still publishing after {timeout:.0f}s")


async def collect_summary(stack: Stack, nc) -> dict:
    """Counts per stage, dead letters and audit's portfolio."""
    jsm = nc.jsm()
    totals = observe.stage_totals(await observe.subject_counts(jsm))
    _, portfolio = await stack.get("audit", "/v1/portfolio")
    return {
        "bars": totals[DATA_READY],
        "signals": totals[SIGNALS_READY],
        "validated": totals[VALIDATED_READY],
        "rejected_quant": totals["rejected.quant"],
        "approved": totals[APPROVED_READY],
        "rejected_risk": totals["rejected.risk"],
        "rejections": await observe.rejections(nc),
        "fills": totals[EXECUTED_READY],
        "dead_letters": await observe.dead_letters(jsm),
        "portfolio": portfolio,
    }


async def run_demo(home: Path, data: tuple[str, ...], timeout: float, data_env: dict[str, str],
                   env: dict[str, str], progress: Progress | None = None) -> dict:
    """Start everything with `env` settings, feed `data`, wait for audit to see it all, summarise, stop;
    `progress` hears the bars published, then the events processed."""
    stack = Stack(home, env=env, per_service_env={"data": data_env})
    started = time.monotonic()
    try:
        await stack.start()
        up_at = time.monotonic()
        nc = await nats.connect(stack.nats_url, connect_timeout=3)
        try:
            await wait_published(stack, timeout, progress)
            drained = (lambda done, total: progress("draining", done, total)) if progress else None
            await observe.wait_drained(nc.jsm(), DURABLES, timeout, progress=drained)
            done_at = time.monotonic()
            summary = await collect_summary(stack, nc)
        finally:
            await nc.close()
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            codes = await asyncio.shield(stack.stop())
    events = sum(v for k, v in summary.items() if isinstance(v, int) and k != "dead_letters")
    audit_log = audit_trail_location(stack)
    logged = Counter(line["type"] for line in await trail.read(audit_log))
    where = stack.store_location()   # the embedded file under the home unless TRADEFLOW_STORE says otherwise
    async with open_event_store(where, read_only=True) as store:
        recorded = await store.count()
    summary.update({
        "data": list(data),
        "startup_seconds": round(up_at - started, 2),
        "pipeline_seconds": round(done_at - up_at, 2),
        "events_per_second": round(events / max(done_at - up_at, 1e-9), 1),
        "bars_per_second": round(summary["bars"] / max(done_at - up_at, 1e-9), 1),
        "home": str(stack.home),
        "nats_store": str(stack.home / "nats"),
        "logs": str(stack.logs),
        "audit_log": trail.shown(audit_log),
        "audit_log_lines": dict(logged),
        "fill_ledger": str(parse_location(fill_ledger_location(stack), LEDGER)),   # a URL's password hidden
        "event_store": str(where),
        "event_store_events": recorded,
        "exit_codes": codes,
    })
    return summary


def audit_trail_location(stack: Stack) -> str:
    """Where the stack's audit service kept its trail: its TRADEFLOW_AUDIT_LOG, else the default file."""
    given = stack.supervisor.procs["audit"].env.get(trail.SETTING)
    return given or str(stack.home / "audit" / trail.DEFAULT_FILE)


def fill_ledger_location(stack: Stack) -> str:
    """Where the stack's execution service keeps its fill ledger: its TRADEFLOW_EXECUTION_LEDGER, else the default
    file."""
    given = stack.supervisor.procs["execution"].env.get(LEDGER)
    return given or str(stack.home / "execution" / "fills.sqlite")


def render(s: dict) -> str:
    """The summary as a few readable lines."""
    pf = s["portfolio"]
    win = "-" if pf["win_rate_pct"] is None else f"{pf['win_rate_pct']:.1f} %"
    lines = [
        f"tradeflow demo — {', '.join(s['data'])}",
        f"  bars in        {s['bars']:>8}",
        f"  signals        {s['signals']:>8}",
        f"  validated      {s['validated']:>8}   rejected by quant {s['rejected_quant']}",
        f"  approved       {s['approved']:>8}   rejected by risk  {s['rejected_risk']}",
        f"  fills          {s['fills']:>8}",
        *(["  rejections     " + ", ".join(f"{rule} {n}" for rule, n in s["rejections"].items())]
          if s.get("rejections") else []),
        f"  dead letters   {s['dead_letters']:>8}",
        f"  cash           {pf['cash']:>14,.2f}",
        f"  equity         {pf['equity']:>14,.2f}   PnL {pf['pnl']:,.2f} "
        f"(realised {pf['realized_pnl']:,.2f}, unrealised {pf['unrealized_pnl']:,.2f}, "
        f"commissions {pf['commissions']:,.2f})",
        f"  trades         {pf['trade_count']:>8}   win rate {win}  return {pf['return_pct']:.2f} %  "
        f"max drawdown {pf['max_drawdown_pct']:.2f} %  exposure {pf['exposure_pct']:.1f} %",
        "  positions      " + (", ".join(f"{sym} {p['quantity']:g} @ {p['avg_price']:.2f}"
                                        for sym, p in pf["positions"].items()) or "flat"),
        f"  throughput     {s['events_per_second']:,.0f} events/s ({s['bars_per_second']:,.0f} bars/s) "
        f"over {s['pipeline_seconds']}s; start-up {s['startup_seconds']}s",
        f"  audit log      {s['audit_log']} ({s['audit_log_lines'].get('fill', 0)} fills, "
        f"{s['audit_log_lines'].get('trade', 0)} trades); fill ledger {s['fill_ledger']}",
        f"  event store    {s['event_store']} ({s['event_store_events']:,} events)",
        f"  data lives in  {s['home']} (JetStream store {s['nats_store']}, logs {s['logs']})",
    ]
    return "\n".join(lines)
