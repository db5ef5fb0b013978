"""What-if: the agents' pure logic re-run over recorded bars, with other settings, diffed against the record.

`load_recorded` reads a window of bars from the event store and every output those bars caused,
only through the store's query API (nothing here writes). `whatif` builds the five consuming agents
from a settings mapping, runs them over the bars with their recorded ids (`services.offline.simulate`), so
each output gets the id the live runtime derived for it, and diffs per stage: added (simulated
only), removed (recorded only), changed (same key, another event; compared decoded, so JSON
formatting does not matter). Fills are matched by order id: a fill's own id derives from whichever
input made it, its order or the bar the order waited for, and which comes last is a race, live.

With the live run's settings, over a window that starts where the run started, the diff is empty.
Every agent starts empty at the window's first bar, so a window that starts mid-run (no warm-up, no
open positions) or leaves out symbols that shared the account can differ for that reason alone.

    TradeflowError
     └── WhatIfError     the window holds no bar to re-run
"""

from __future__ import annotations

import heapq
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Literal

import msgspec

from contracts.codec import Incoming, ce_type_of, decode_body
from contracts.envelope import REPLAY_RUN, Envelope, rfc3339
from contracts.errors import BadInput, ConfigError, TradeflowError
from contracts.events import BarReceived, Event, OrderApproved, OrderFilled
from contracts.subjects import DATA_READY, stage_of, subject_for
from replay.store import EventStore, StoredEvent, TimeColumn
from services import registry
from services.audit.logic import Portfolio, summary
from services.audit.service import AuditAgent, AuditSettings
from services.execution.logic import BrokerParams
from services.offline.simulate import simulate
from services.quant.logic import QuantParams
from services.risk.logic import RiskParams
from services.strategy.logic import COMMON
from services.strategy.service import StrategyChoice
from services.strategy.strategies import STRATEGIES

# the output stages in causal order, each with the stage whose events cause it (fills: see `_key`)
CAUSES = {"signals_ready": DATA_READY, "validated_ready": "signals_ready", "rejected.quant": "signals_ready",
          "approved_ready": "validated_ready", "rejected.risk": "validated_ready", "executed_ready": "approved_ready"}
OUTPUT_STAGES = tuple(CAUSES)
_MICRO = timedelta(microseconds=1)
_SETTING = re.compile(r"TRADEFLOW_[A-Z0-9_]+")


class WhatIfError(TradeflowError):
    """Raised when the window holds no (decodable) data_ready event to re-run."""


class Skipped(msgspec.Struct, frozen=True):
    """A recorded row left out because its body no longer decodes: its id, its subject and why."""

    id: str
    subject: str
    reason: str


class Recorded(msgspec.Struct, frozen=True, kw_only=True):
    """A window of the record: the bars as the pipeline saw them, the outputs they caused, rows skipped."""

    window: str                                  # what was asked for, for messages
    bars: list[tuple[str, BarReceived]]          # (id, bar), in the order `simulate` must see them
    outputs: list[tuple[str, Event]]             # (id, event) of the later stages, stage by stage
    skipped: list[Skipped] = []


class StageDiff(msgspec.Struct, frozen=True, kw_only=True):
    """How many events one stage recorded and simulated, and how many differ."""

    stage: str
    recorded: int
    simulated: int
    added: int
    removed: int
    changed: int


class Difference(msgspec.Struct, frozen=True, kw_only=True):
    """One differing event. `key` is its id, except for a fill: its order id (see `_key`)."""

    stage: str
    kind: Literal["added", "removed", "changed"]
    key: str
    recorded: Event | None = None
    simulated: Event | None = None
    fields: tuple[str, ...] = ()                 # changed: the fields that differ

    @property
    def event(self) -> Event:
        """The recorded event, or the simulated one if none was recorded."""
        return self.simulated if self.recorded is None else self.recorded


class Performance(msgspec.Struct, frozen=True, kw_only=True):
    """The portfolio the fills add up to, marked to the window's bars (as `services.audit.logic.summary`)."""

    equity: float
    pnl: float
    realized_pnl: float
    return_pct: float
    max_drawdown_pct: float
    trades: int
    fills: int


class WhatIf(msgspec.Struct, frozen=True, kw_only=True):
    """The diff of a what-if run against the record, and the portfolio before (recorded) and after (simulated)."""

    window: str
    bars: int
    stages: tuple[StageDiff, ...]
    differences: tuple[Difference, ...]          # in event time, then stage order
    before: Performance
    after: Performance
    skipped: tuple[Skipped, ...] = ()
    dead_letters: dict[str, int] = {}            # inputs the simulated agents refused, per dlq.<service>

    @property
    def identical(self) -> bool:
        """Whether the simulation produced exactly the recorded events."""
        return not self.differences

    def to_dict(self) -> dict:
        """One JSON-able dict: every field (events as their JSON bodies), plus `identical`."""
        return msgspec.to_builtins(self) | {"identical": self.identical}


async def load_recorded(store: EventStore, *, since: datetime | None = None, until: datetime | None = None,
                        symbols: Sequence[str] = (), by: TimeColumn = "event_ts", run: str | None = None) -> Recorded:
    """The bars in [since, until) on the `by` column (of `symbols`, default all) and the outputs they caused.

    `run`: which recording, when replays were recorded too: None, the original events (no
    `tradeflow-replay-run` header); else that replay run's events. Mixing them would feed each bar twice.

    Outputs are found by cause, not by window: an output belongs if its causation id is an event of the
    stage before it that belongs (a fill: if its order does), starting from the window's bars. So injected
    events, and outputs of bars outside the window, are left out whichever time column windows the bars.
    Only the bars' span of event time is searched: every output carries its bar's time, a fill the time
    of the bar it filled at, so a fill whose bar is past the window is left out, as the simulation, without
    that bar, cannot fill it either. Bodies that no longer decode are skipped and listed.
    """
    window = _describe(store, since, until, symbols, by, run)
    skipped: list[Skipped] = []
    rows = await _window(store, since, until, symbols, by, run)
    bars = _decoded((row for row in rows if row.stage == DATA_READY), skipped)
    if not bars:
        undecodable = f" ({len(skipped)} undecodable)" if skipped else ""
        raise WhatIfError(f"no data_ready events in {window}{undecodable}")
    if by != "event_ts":  # outputs carry their bar's time, not when the bars were published
        times = [bar.ts for _, bar in bars]
        rows = await _window(store, min(times), max(times) + _MICRO, symbols, "event_ts", run)
    outputs = _caused((row for row in rows if row.stage != DATA_READY), {row.id for row, _ in bars}, skipped)
    return Recorded(window=window, bars=_pipeline_order(bars), outputs=outputs, skipped=skipped)


async def _window(store: EventStore, since: datetime | None, until: datetime | None, symbols: Sequence[str],
                  by: TimeColumn, run: str | None) -> list[StoredEvent]:
    """Every event of recording `run` in [since, until) on `by`, of `symbols` (default all), every stage.

    The filters suit the store's indexes: a symbol filter only on event time (index (symbol, event_ts)),
    else one scan filtered here; never a subject filter, for which SQLite sorts every page (20x slower).
    """
    if symbols and by == "event_ts":
        rows = [row for symbol in symbols async for row in store.query(symbol=symbol, since=since, until=until)]
    else:
        wanted = set(symbols)
        rows = [row async for row in store.query(since=since, until=until, by=by) if not wanted or row.symbol in wanted]
    return [row for row in rows if row.headers.get(REPLAY_RUN) == run]


def _describe(store: EventStore, since: datetime | None, until: datetime | None, symbols: Sequence[str],
              by: str, run: str | None) -> str:
    """The window in words: store, span, symbols and recording."""
    span = f"{by} from {rfc3339(since) if since else 'the start'} until {rfc3339(until) if until else 'the end'}"
    where = f" of {', '.join(symbols)}" if symbols else ""
    return f"{getattr(store, 'path', 'the event store')} ({span}{where}{f', replay run {run}' if run else ''})"


def _decoded(rows: Iterable[StoredEvent], skipped: list[Skipped]) -> list[tuple[StoredEvent, Event]]:
    """Each row with its decoded body; a row whose body does not decode (or names another symbol) is skipped."""
    out = []
    for row in rows:
        try:
            event = decode_body(row.stage, row.body)
        except BadInput as exc:
            skipped.append(Skipped(row.id, row.subject, str(exc)))
            continue
        if event.symbol != row.symbol:
            skipped.append(Skipped(row.id, row.subject, f"body symbol {event.symbol!r} is not the subject's"))
            continue
        out.append((row, event))
    return out


def _caused(rows: Iterable[StoredEvent], bar_ids: set[str], skipped: list[Skipped]) -> list[tuple[str, Event]]:
    """(id, event) of the rows caused, stage by stage, by the bars `bar_ids`."""
    by_stage: dict[str, list[StoredEvent]] = defaultdict(list)
    for row in rows:
        by_stage[stage_of(row.subject, by_origin=True)].append(row)
    belongs: dict[str, set[str]] = {DATA_READY: bar_ids}
    kept: list[StoredEvent] = []
    for stage in OUTPUT_STAGES[:-1]:
        chosen = [row for row in by_stage[stage] if row.causation_id in belongs[CAUSES[stage]]]
        belongs[stage] = {row.id for row in chosen}
        kept += chosen
    decoded = _decoded(kept, skipped)
    orders = belongs["approved_ready"]  # a fill's cause is its order (in older recordings, the bar it filled on)
    order_ids = {event.order_id for _, event in decoded if isinstance(event, OrderApproved)}
    fills = [row for row in by_stage["executed_ready"] if row.causation_id in orders or row.causation_id in bar_ids]
    decoded += [(row, fill) for row, fill in _decoded(fills, skipped) if fill.order_id in order_ids]
    return [(row.id, event) for row, event in decoded]


def _pipeline_order(bars: list[tuple[StoredEvent, BarReceived]]) -> list[tuple[str, BarReceived]]:
    """(id, bar) as `simulate` needs them: each symbol's bars in stream order (as every consumer saw them, so an
    out-of-order bar is refused again), the symbols interleaved by bar time, then stream order, then symbol.

    That is the order the data service publishes in, and the live pipeline's results equal simulate's over it.
    """
    per_symbol: dict[str, list[tuple[StoredEvent, BarReceived]]] = defaultdict(list)
    for row, bar in bars:
        per_symbol[bar.symbol].append((row, bar))
    streams = [sorted(rows, key=lambda item: item[0].stream_seq) for _, rows in sorted(per_symbol.items())]
    merged = heapq.merge(*streams, key=lambda item: (item[1].ts, item[0].stream_seq))
    return [(row.id, bar) for row, bar in merged]


def whatif(recorded: Recorded, env: Mapping[str, str], *, recorded_env: Mapping[str, str] | None = None,
           progress: Callable[[int], None] | None = None) -> WhatIf:
    """Re-run the five consuming agents, built from the settings `env`, over the recorded bars; diff their
    outputs against the recorded ones. "Before" folds the recorded fills into an audit agent built from
    `recorded_env` (the live run's settings, for its cash; default `env`). ConfigError on a bad setting.
    `progress(bars re-run so far)` is called as the bars go through."""
    if not recorded.bars:
        raise WhatIfError(f"no data_ready events in {recorded.window}")
    agents = {name: registry.build(name, env) for name in registry.CONSUMERS}
    auditor = registry.build("audit", env if recorded_env is None else recorded_env)
    sim = simulate(recorded.bars, **agents, progress=progress)
    theirs = _keyed(recorded.outputs)
    ours = _keyed((event_id, event) for event_id, event in sim.events if not isinstance(event, BarReceived))
    stages, differences = _diff(theirs, ours)
    before = _fold(auditor, [*recorded.bars, *theirs["executed_ready"].items()])  # one fill per order id
    return WhatIf(window=recorded.window, bars=len(recorded.bars), stages=stages, differences=differences,
                  before=_performance(before), after=_performance(sim.audit.report()),
                  skipped=tuple(recorded.skipped),
                  dead_letters={k: n for k, n in sorted(sim.counts.items()) if k.startswith("dlq.")})


def _key(event_id: str, event: Event) -> str:
    """What an output is matched by: its id, except a fill's order id. A fill's id derives from the input that
    made it, its order or the bar the order waited for, whichever reached execution last: a race, live."""
    return event.order_id if isinstance(event, OrderFilled) else event_id


def _keyed(outputs: Iterable[tuple[str, Event]]) -> dict[str, dict[str, Event]]:
    """Outputs per stage, by key."""
    keyed: dict[str, dict[str, Event]] = {stage: {} for stage in OUTPUT_STAGES}
    for event_id, event in outputs:
        keyed[stage_of(subject_for(event), by_origin=True)][_key(event_id, event)] = event
    return keyed


def _diff(theirs: dict[str, dict[str, Event]],
          ours: dict[str, dict[str, Event]]) -> tuple[tuple[StageDiff, ...], tuple[Difference, ...]]:
    """Per stage, the counts; and every difference, in event time then stage order."""
    stages, differences = [], []
    for stage in OUTPUT_STAGES:
        old, new = theirs[stage], ours[stage]
        added = [Difference(stage=stage, kind="added", key=k, simulated=new[k]) for k in new.keys() - old.keys()]
        removed = [Difference(stage=stage, kind="removed", key=k, recorded=old[k]) for k in old.keys() - new.keys()]
        changed = [Difference(stage=stage, kind="changed", key=k, recorded=old[k], simulated=new[k],
                              fields=_changed_fields(old[k], new[k]))
                   for k in old.keys() & new.keys() if old[k] != new[k]]
        stages.append(StageDiff(stage=stage, recorded=len(old), simulated=len(new), added=len(added),
                                removed=len(removed), changed=len(changed)))
        differences += added + removed + changed
    rank = {stage: n for n, stage in enumerate(OUTPUT_STAGES)}
    differences.sort(key=lambda d: (d.event.ts, rank[d.stage], d.kind, d.key))
    return tuple(stages), tuple(differences)


def _changed_fields(old: Event, new: Event) -> tuple[str, ...]:
    return tuple(f for f in old.__struct_fields__ if getattr(old, f) != getattr(new, f))


def _fold(audit: AuditAgent, events: Iterable[tuple[str, Event]]) -> Portfolio:
    """Feed (id, event) pairs to an audit agent, as the live one gets them; its portfolio (in event time)."""
    now = datetime.now(timezone.utc)
    for event_id, event in events:
        subject = subject_for(event)
        envelope = Envelope(id=event_id, type=ce_type_of(event), source="whatif", time=event.ts, subject=subject,
                            trace_id=event_id)
        audit.handle(Incoming(envelope, event), now)
    return audit.report()


def _performance(pf: Portfolio) -> Performance:
    s = summary(pf)
    return Performance(equity=s["equity"], pnl=s["pnl"], realized_pnl=s["realized_pnl"], return_pct=s["return_pct"],
                       max_drawdown_pct=s["max_drawdown_pct"], trades=s["trade_count"], fills=s["fills"])


def overrides_env(base: Mapping[str, str], *, strategy: str | None = None, params: Sequence[str] = (),
                  sets: Sequence[str] = ()) -> dict[str, str]:
    """`base` with another strategy (its parameters from `base` dropped, the common ones kept), strategy
    parameters `NAME=VALUE` and settings `TRADEFLOW_NAME=VALUE` (applied last); ConfigError on a malformed
    or unknown one. Values are checked when the agents are built (by `whatif`)."""
    env = dict(base)
    current = env.get("TRADEFLOW_STRATEGY_NAME", StrategyChoice().name)
    name = current if strategy is None else strategy
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    if name != current and current in STRATEGIES:
        for field in _own_fields(current):
            env.pop(f"TRADEFLOW_STRATEGY_{field.upper()}", None)
    env["TRADEFLOW_STRATEGY_NAME"] = name
    known = {f.name for f in msgspec.structs.fields(STRATEGIES[name][0])}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}")
        env[f"TRADEFLOW_STRATEGY_{key.upper()}"] = value
    settings = _agent_settings()
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not _SETTING.fullmatch(key):
            raise ConfigError(f"--set {item!r}: expected TRADEFLOW_NAME=VALUE")
        if key not in settings:
            raise ConfigError(f"--set {key}: no strategy, quant, risk, execution or audit setting has that name")
        env[key] = value
    return env


def _own_fields(strategy: str) -> list[str]:
    """A strategy's own parameters, not the ones every strategy shares."""
    return [f.name for f in msgspec.structs.fields(STRATEGIES[strategy][0]) if f.name not in COMMON]


def _agent_settings() -> set[str]:
    """Every variable the five consuming agents read: a name outside it could not change a what-if."""
    structs = [(StrategyChoice, "STRATEGY"), *((cls, "STRATEGY") for cls, _ in STRATEGIES.values()),
               (QuantParams, "QUANT"), (RiskParams, "RISK"), (BrokerParams, "EXECUTION"), (AuditSettings, "AUDIT")]
    return {f"TRADEFLOW_{prefix}_{f.name.upper()}" for cls, prefix in structs for f in msgspec.structs.fields(cls)}
