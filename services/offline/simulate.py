"""The whole pipeline's logic in one process, no servers: what the live services must produce.

Each agent's own `handle()` runs in stage order over the bars, with the ids the
runtime would give every output, so the result is what the six services yield
for the same bars and settings (used by the tests, backtest and what-if). A bar comes
alone (its id derived from symbol and time, as the data service does) or as an (id, bar)
pair, so recorded bars keep the ids they were recorded with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

import msgspec

from contracts.codec import Incoming
from contracts.envelope import Envelope
from contracts.errors import BadInput
from contracts.events import BarReceived, Event
from contracts.subjects import STAGES, stage_of, subject_for
from services.audit.service import AuditAgent
from services.data.service import bar_id
from services.execution.service import ExecutionAgent
from services.quant.service import QuantAgent
from services.risk.service import RiskAgent
from services.runtime.agent import output_id, unwrap
from services.strategy.service import StrategyAgent


class Simulation(msgspec.Struct):
    """Counts of events per stage (rejections as rejected.<stage>, dead letters as dlq.<service>),
    the audit agent's final state, every (id, event) in delivery order, and each output's cause:
    the id of the input it came from, or of the one the agent names (what its ce-causationid says)."""

    counts: Counter
    audit: AuditAgent
    events: list[tuple[str, Event]]
    causes: dict[str, str] = {}


def _incoming(event_id: str, event: Event) -> Incoming:
    subject = subject_for(event)
    stage = stage_of(subject)
    env = Envelope(id=event_id, type=STAGES[stage][1], source="simulation", time=datetime.now(timezone.utc),
                   subject=subject, trace_id=event_id)
    return Incoming(env, event)


def simulate(bars: Iterable[BarReceived | tuple[str, BarReceived]], *, strategy: StrategyAgent, quant: QuantAgent,
             risk: RiskAgent, execution: ExecutionAgent, audit: AuditAgent,
             progress: Callable[[int], None] | None = None) -> Simulation:
    """Feed bars (or (id, bar) pairs) through every agent in order, routing outputs as the subjects would;
    `progress(bars so far)` is called every 256 bars and at the end."""
    routes: dict[str, list] = {}
    for agent in (strategy, quant, risk, execution, audit):
        for pattern in agent.consumes:
            routes.setdefault(stage_of(pattern), []).append(agent)
    counts: Counter = Counter()
    events: list[tuple[str, Event]] = []
    causes: dict[str, str] = {}
    now = datetime.now(timezone.utc)

    def deliver(event_id: str, event: Event) -> None:
        subject = subject_for(event)
        counts[stage_of(subject, by_origin=True)] += 1
        events.append((event_id, event))
        incoming = _incoming(event_id, event)
        for agent in routes.get(stage_of(subject), []):
            try:
                outputs = agent.handle(incoming, now)
            except BadInput:   # live, this input would be dead-lettered; the rest flows on
                counts[f"dlq.{agent.name}"] += 1
                continue
            for index, output in enumerate(outputs):   # as the runtime does: an output may name its key and cause
                out_id = output_id(agent.name, event_id, index, output)
                out, cause = unwrap(output)
                causes[out_id] = cause[1] if cause else event_id
                deliver(out_id, out)

    done = 0
    for item in bars:
        if isinstance(item, tuple):
            deliver(*item)
        else:
            deliver(bar_id(item), item)
        done += 1
        if progress is not None and not done % 256:
            progress(done)
    if progress is not None:
        progress(done)
    return Simulation(counts, audit, events, causes)
