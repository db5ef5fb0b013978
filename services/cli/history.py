"""`tradeflow events | trace | store | replay | whatif`: the recorded history. Read the event store
(read-only), compact and export it, re-drive a window of it, re-run the logic over it with other settings.

Every read command opens the store read-only, so it can never change it, even while the
recorder writes to it. `--store` (or TRADEFLOW_STORE) is a path, `sqlite:///path` or a
`postgresql://` URL; a store that cannot be used is a one-line error naming which of the two.

Times are RFC 3339 (`2024-01-02T14:30:00Z`) or a date (`2024-01-02`, midnight UTC);
`--by event_ts` (the default) windows on the bar's time, `--by time` on when the event was published.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import click
import msgspec
import orjson

from contracts.envelope import rfc3339
from contracts.errors import TradeflowError
from contracts.subjects import STAGES, stage_of
from replay.store import EventStore, Filters, Location, Opening, StoredEvent, parse_location, subject_match
from services.audit import trail
from services.cli.common import Progress, connect, run_async
from services.runtime.store import data_home, open_event_store, store_location

STAGE_NAMES = tuple(STAGES)


class Instant(click.ParamType):
    """An RFC 3339 time or a date; a time without a zone is UTC."""

    name = "TIME"

    def convert(self, value, param, ctx) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            ts = datetime.fromisoformat(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a time: use 2024-01-02 or 2024-01-02T14:30:00Z", param, ctx)
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


INSTANT = Instant()


def _location(ctx: click.Context, param: click.Parameter, value: str | None) -> Location:
    """--store's location, else TRADEFLOW_STORE's (else the default file); ConfigError naming which."""
    return store_location() if value is None else parse_location(value, "--store")


def _opened(where: Location, *, read_only: bool = False, must_exist: bool = False) -> Opening[EventStore]:
    """The store at `where`, for a command: what stops it is one line (ConfigError). A PostgreSQL pool's
    warnings as it retries its first connection say the same again, so they are not shown."""
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    return open_event_store(where, read_only=read_only, must_exist=must_exist)


def store_option(command):
    return click.option("--store", "where", callback=_location, show_default="$TRADEFLOW_STORE, else "
                        "$TRADEFLOW_DATA_DIR/recorder/events.sqlite", metavar="PATH|URL",
                        help="The event store: a file, sqlite:///path or postgresql://host/db.")(command)


def filter_options(command):
    """--since/--until/--by/--subject/--symbol/--trace: which events a command covers."""
    for option in reversed([
        click.option("--since", type=INSTANT, help="From this time (inclusive)."),
        click.option("--until", type=INSTANT, help="Up to this time (exclusive)."),
        click.option("--by", type=click.Choice(["event_ts", "time"]), default="event_ts", show_default=True,
                     help="Window on the bar's time (event_ts) or on the publish time (time)."),
        click.option("--subject", "subjects", multiple=True, metavar="PATTERN",
                     help="NATS subject pattern, e.g. 'signals_ready.*' or 'rejected.>'. Repeatable."),
        click.option("--symbol", help="Only this symbol."),
        click.option("--trace", "trace_id", help="Only this trace (one bar's journey)."),
    ]):
        command = option(command)
    return command


def filters_of(since, until, by, subjects, symbol, trace_id) -> Filters:
    """The store filters of the options; a clear error for a pattern no pipeline subject can match."""
    for pattern in subjects:
        check_pattern(pattern)
    check_window(since, until)
    return Filters(since=since, until=until, by=by, subjects=subjects, symbol=symbol and symbol.upper(),
                   trace_id=trace_id)


def check_window(since: datetime | None, until: datetime | None) -> None:
    """UsageError for a window that ends before it starts."""
    if since and until and since >= until:
        raise click.BadParameter(f"--since {rfc3339(since)} is not before --until {rfc3339(until)}")


def check_pattern(pattern: str) -> None:
    """UsageError unless `pattern` is a well-formed NATS pattern over the pipeline's stages."""
    try:
        subject_match(pattern)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--subject") from None
    first = stage_of(pattern)
    if first not in ("*", ">") and first not in STAGE_NAMES:
        raise click.BadParameter(f"unknown subject pattern {pattern!r}: subjects begin with one of "
                                 f"{', '.join(STAGE_NAMES)}", param_hint="--subject")


async def nothing_matched(store: EventStore, where: Location, filters: Filters) -> str:
    """The one-line error when a query finds nothing: what was asked and what the store holds."""
    stats = await store.stats()
    if not stats.count:
        return f"the event store {where} is empty"
    column = "event_ts" if filters.get("by", "event_ts") == "event_ts" else "time"
    first, last = (stats.first_event_ts, stats.last_event_ts) if column == "event_ts" else (stats.first_time,
                                                                                           stats.last_time)
    asked = {k: _shown(rfc3339(v) if isinstance(v, datetime) else v) for k, v in filters.items() if v and k != "by"}
    return (f"no events match {' '.join(f'{k}={v}' for k, v in asked.items()) or 'the query'} "
            f"(the store holds {stats.count} events, {column} {rfc3339(first)} .. {rfc3339(last)})")


def _shown(value: object, limit: int = 80) -> str:
    """A value as it goes into a message: one line, cut at `limit` characters."""
    text = ",".join(value) if isinstance(value, (tuple, list)) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def event_line(e: StoredEvent) -> dict:
    """One event as a JSON-able object: envelope, times in RFC 3339, the body as JSON."""
    return {"id": e.id, "subject": e.subject, "type": e.type, "source": e.source, "time": rfc3339(e.time),
            "event_ts": rfc3339(e.event_ts), "trace_id": e.trace_id, "causation_id": e.causation_id,
            "stream_seq": e.stream_seq, "headers": e.headers, "body": orjson.loads(e.body)}


def summary(e: StoredEvent) -> str:
    """The interesting fields of a body, short."""
    try:
        body = orjson.loads(e.body)
    except orjson.JSONDecodeError:
        return e.body[:60].decode(errors="replace")
    keep = ("side", "quantity", "price", "close", "strength", "rule", "order_id", "commission")
    return " ".join(f"{k}={body[k]}" for k in keep if k in body)


def short_time(ts: datetime) -> str:
    """RFC 3339 in UTC, to the second unless the time has a fraction."""
    spec = "microseconds" if ts.microsecond else "seconds"
    return ts.astimezone(timezone.utc).isoformat(timespec=spec).replace("+00:00", "Z")


def table_rows(events: list[StoredEvent]) -> list[str]:
    lines = [f"{'event_ts':<20} {'subject':<26} {'id':<32} fields"]
    lines += [f"{short_time(e.event_ts):<20} {e.subject:<26} {e.id:<32} {summary(e)}" for e in events]
    return lines


@click.command("events")
@store_option
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="At most this many.")
@click.option("--all", "everything", is_flag=True, help="No limit.")
@click.option("--last", is_flag=True, help="The newest first.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one event each, body as JSON.")
@click.option("--count", "count_only", is_flag=True, help="Print only how many match.")
def events(where, since, until, by, subjects, symbol, trace_id, limit, everything, last, as_json,
           count_only) -> None:
    """Query the event store: a time window, subject patterns, a symbol, a trace."""

    filters = filters_of(since, until, by, subjects, symbol, trace_id)

    async def main() -> None:
        async with _opened(where, read_only=True) as store:
            if count_only:
                click.echo(await store.count(**filters))
                return
            rows = store.query(limit=None if everything else limit, order="desc" if last else "asc", **filters)
            shown = await _emit(rows, as_json)
            if not shown:
                raise TradeflowError(await nothing_matched(store, where, filters))

    run_async(main())


async def _emit(rows: AsyncIterator[StoredEvent], as_json: bool) -> int:
    """Print events as they come (JSON lines) or as a table; how many."""
    n = 0
    table: list[StoredEvent] = []
    async for e in rows:
        n += 1
        if as_json:
            sys.stdout.buffer.write(orjson.dumps(event_line(e), option=orjson.OPT_APPEND_NEWLINE))
        else:
            table.append(e)
            if len(table) == 1000:
                click.echo("\n".join(table_rows(table)))
                table = []
    if table:
        click.echo("\n".join(table_rows(table)))
    sys.stdout.flush()
    return n


class Step(msgspec.Struct, frozen=True):
    """One event of a trace and the time its stage took: from its cause's publish time to its own."""

    stage: str
    subject: str
    id: str
    time: datetime
    event_ts: datetime
    after_cause_ms: float | None
    since_start_ms: float
    fields: str


def journey(events: list[StoredEvent], audited: Sequence[dict] = ()) -> list[Step]:
    """The steps of a trace in publish order, each with the time since its cause and since the first event;
    then the audit log's lines for its fills (`audited`), timed from the fill."""
    if not events:
        return []
    by_id = {e.id: e for e in events}
    start = min(e.time for e in events)

    def ms(later: datetime, earlier: datetime) -> float:
        return (later - earlier).total_seconds() * 1000

    steps = []
    for e in sorted(events, key=lambda e: (e.time, e.stream_seq)):
        cause = by_id.get(e.causation_id or "")
        steps.append(Step(stage=e.stage if e.stage != "rejected" else e.subject.rsplit(".", 1)[0], subject=e.subject,
                          id=e.id, time=e.time, event_ts=e.event_ts,
                          after_cause_ms=None if cause is None else ms(e.time, cause.time),
                          since_start_ms=ms(e.time, start), fields=summary(e)))
    for line in audited:
        fill = by_id.get(line.get("id", ""))
        logged = datetime.fromisoformat(str(line.get("logged_at", "")).replace("Z", "+00:00")) if fill else None
        if fill and logged and logged.tzinfo:
            steps.append(Step(stage="audit", subject="audit log", id=fill.id, time=logged, event_ts=fill.event_ts,
                              after_cause_ms=ms(logged, fill.time), since_start_ms=ms(logged, start),
                              fields="fill logged"))
    return steps


async def audit_lines(location: str, trace_id: str) -> list[dict]:
    """The audit trail's fill lines of one trace; none if there is no trail or it cannot be read."""
    try:
        lines = await trail.read(location)
    except (TradeflowError, OSError, ValueError):   # no trail (yet), not one, unreachable
        return []
    return [line for line in lines if line.get("type") == "fill" and line.get("trace_id") == trace_id]


@click.command("trace")
@click.argument("event_or_trace_id")
@store_option
@click.option("--audit-log", envvar="TRADEFLOW_AUDIT_LOG",
              help="The audit trail, for the last step: a path, sqlite:///path or postgresql://… "
                   "(default: audit/audit.jsonl beside the store's folder; for a PostgreSQL store, in "
                   "$TRADEFLOW_DATA_DIR).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per step.")
def trace(event_or_trace_id: str, where: Location, audit_log: str | None, as_json: bool) -> None:
    """Follow one bar's journey from data to audit, stage by stage, with the time spent at each.

    EVENT_OR_TRACE_ID is a trace id or the id of any event on it (e.g. the bar's). A stage's
    time runs from its cause's publish time to its own; audit's, from the fill to its log line.
    """

    async def main() -> None:
        async with _opened(where, read_only=True) as store:
            key = event_or_trace_id.strip()
            event = await store.get(key)
            trace_id = event.trace_id if event else key
            events_of_trace = await store.trace(trace_id)
            log = audit_log or str(data_home(where) / "audit" / trail.DEFAULT_FILE)
            audited = await audit_lines(log, trace_id) if events_of_trace else []
            steps = journey(events_of_trace, audited)
            if not steps:
                raise TradeflowError(f"no event or trace {_shown(key)!r} in the event store {where}")
        if as_json:
            for step in steps:
                click.echo(orjson.dumps(msgspec.to_builtins(step)).decode())
            return
        click.echo(f"trace {trace_id}  ({len(steps)} events over {steps[-1].since_start_ms:,.1f} ms)")
        click.echo(f"  {'stage':<16} {'+ms (stage)':>12} {'+ms (total)':>12}  {'id':<32} fields")
        for s in steps:
            took = "" if s.after_cause_ms is None else f"{s.after_cause_ms:,.1f}"
            click.echo(f"  {s.stage:<16} {took:>12} {s.since_start_ms:>12,.1f}  {s.id:<32} {s.fields}")

    run_async(main())


@click.group("store")
def store() -> None:
    """Look after the event store: stats, compact, export."""


@store.command("stats")
@store_option
@click.option("--json", "as_json", is_flag=True)
def stats(where: Location, as_json: bool) -> None:
    """How many events the store holds, their time span and the count per stage."""

    async def main() -> None:
        async with _opened(where, read_only=True) as s:
            st = await s.stats()
        if as_json:
            click.echo(orjson.dumps(msgspec.to_builtins(st) | {"path": str(where)}).decode())
            return
        click.echo(f"{where}: {st.count:,} events")
        if st.count:
            click.echo(f"  bar time   {rfc3339(st.first_event_ts)} .. {rfc3339(st.last_event_ts)}")
            click.echo(f"  published  {rfc3339(st.first_time)} .. {rfc3339(st.last_time)}")
            for stage, n in st.stages.items():
                click.echo(f"  {stage:<16} {n:>10,}")

    run_async(main())


@store.command("compact")
@store_option
@click.option("--before", type=INSTANT, required=True, help="Delete the events older than this.")
@click.option("--by", type=click.Choice(["event_ts", "time"]), default="event_ts", show_default=True)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def compact(where: Location, before: datetime, by: str, yes: bool) -> None:
    """Delete events older than --before and give the space back (export them first to keep them)."""

    async def main() -> None:
        async with _opened(where, read_only=True) as s:
            doomed = await s.count(until=before, by=by)
        if not doomed:
            raise TradeflowError(f"no events before {rfc3339(before)} ({by}) in {where}: nothing to compact")
        if not yes:
            click.confirm(f"delete {doomed:,} events before {rfc3339(before)} from {where}?", abort=True)
        async with _opened(where, must_exist=True) as s:
            deleted = await s.compact(before, by=by)
            left = await s.count()
        click.echo(f"deleted {deleted:,} events before {rfc3339(before)}; {left:,} left")

    run_async(main())


@store.command("export")
@store_option
@filter_options
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="The file to write ('-' for standard output, JSON lines only).")
def export(where, since, until, by, subjects, symbol, trace_id, fmt, output) -> None:
    """Write the matching events to a JSON lines or Parquet file, for archiving."""

    filters = filters_of(since, until, by, subjects, symbol, trace_id)
    if output == "-" and fmt == "parquet":
        raise click.BadParameter("Parquet needs a file, not standard output", param_hint="--output")

    async def main() -> None:
        async with _opened(where, read_only=True) as s:
            total = await s.count(**filters)
            if not total:
                raise TradeflowError(await nothing_matched(s, where, filters))
            target = sys.stdout.buffer if output == "-" else output
            try:
                n = await s.export(target, fmt=fmt, progress=lambda done: progress("exporting", done, total),
                                   **filters)
            except ModuleNotFoundError as exc:
                raise TradeflowError(str(exc)) from None
        progress.close()
        click.echo(f"exported {n:,} events to {output}", err=True)

    with Progress() as progress:
        run_async(main())


ISOLATE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@click.command("replay")
@store_option
@filter_options
@click.option("--speed", type=click.FloatRange(min=0), default=0, show_default=True,
              help="0: as fast as possible; N: N times real time on the --by clock (86400: a day of bars a second).")
@click.option("--run-id", help="Replay run id (default: derived from the filters, so a repeat is a no-op).")
@click.option("--isolate", metavar="NAME", help="Publish to replay.NAME.<subject> in the REPLAY stream, "
              "untouched by live consumers.")
def replay_command(where, since, until, by, subjects, symbol, trace_id, speed, run_id, isolate) -> None:
    """Re-drive recorded events (data_ready.> unless --subject) into the running pipeline.

    Replayed events get new ids derived from the run id and their original ids, and say so in
    their headers (tradeflow-replay-run, tradeflow-replay-of): the same replay run twice
    publishes nothing the second time.
    """
    from replay.replay import check_target, replay, run_id_for, stages_of

    filters = filters_of(since, until, by, subjects or ("data_ready.>",), symbol, trace_id)
    if isolate is not None and not ISOLATE_NAME.fullmatch(isolate):
        raise click.BadParameter(f"{isolate!r}: letters, digits, '_' and '-' only", param_hint="--isolate")
    run_id = run_id or run_id_for(orjson.dumps(
        {k: rfc3339(v) if isinstance(v, datetime) else v for k, v in filters.items()} | {"isolate": isolate},
        option=orjson.OPT_SORT_KEYS).decode())

    async def main() -> None:
        async with _opened(where, read_only=True) as s:
            total = await s.count(**filters)
            if not total:
                raise TradeflowError(await nothing_matched(s, where, filters))
            nc = await connect()
            try:
                await check_target(nc.jsm(), stages_of(filters["subjects"]), isolate)
                with click.progressbar(length=total, label=f"replay {run_id}", file=sys.stderr,
                                       show_pos=True, show_eta=speed > 0) as bar:
                    result = await replay(s.query(**filters), nc.jetstream(), run_id=run_id, speed=speed,
                                          isolate=isolate, by=by, progress=bar.update)
            finally:
                await nc.close()
        rate = result.read / max(result.seconds, 1e-9)
        click.echo(f"replay {result.run_id}: {result.read:,} events into {result.target}: {result.published:,} "
                   f"published, {result.duplicates:,} already there (replayed before), {result.seconds:.1f}s, "
                   f"{rate:,.0f} events/s")

    run_async(main())


def read_settings(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and # comments skipped); TradeflowError naming a bad line."""
    env = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TradeflowError(f"cannot read settings {path}: {exc}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"TRADEFLOW_[A-Z0-9_]+", key.strip()):
            raise TradeflowError(f"{path}:{number}: expected TRADEFLOW_NAME=VALUE, not {_shown(line)!r}")
        env[key.strip()] = value.strip()
    return env


@click.command("whatif")
@store_option
@click.option("--since", type=INSTANT, help="From this bar time (inclusive).")
@click.option("--until", type=INSTANT, help="Up to this bar time (exclusive).")
@click.option("--symbol", "symbols", multiple=True, help="Only these symbols. Repeatable.")
@click.option("--run", "replay_run", metavar="RUN_ID", help="A recorded replay run instead of the original events.")
@click.option("--settings", "settings_path", type=click.Path(dir_okay=False),
              help="The recorded run's settings (default: settings.env beside the store's folder, as `up` and "
                   "`demo` write it, or in $TRADEFLOW_DATA_DIR for a PostgreSQL store; then the TRADEFLOW_* "
                   "environment).")
@click.option("--strategy", help="Another strategy.")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Strategy parameter. Repeatable.")
@click.option("--set", "sets", multiple=True, metavar="TRADEFLOW_NAME=VALUE",
              help="Any strategy, quant, risk, execution or audit setting. Repeatable.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Differences listed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: per-stage counts, every difference, "
              "the portfolio before and after.")
@click.option("--check", is_flag=True, help="Exit 1 if anything differs (e.g. in CI: the logic still "
              "reproduces the record).")
def whatif_command(where, since, until, symbols, replay_run, settings_path, strategy, params, sets, limit,
                   as_json, check) -> None:
    """Re-run the agents' logic over recorded bars, with other settings if given, and diff against the record.

    With no overrides and the recorded run's settings, the diff is empty: the logic reproduces
    the recorded history exactly.
    """
    from replay.whatif import load_recorded, overrides_env, whatif
    from replay.whatif_report import format_diff
    from services.ops.stack import SETTINGS_FILE

    check_window(since, until)
    base = {k: v for k, v in os.environ.items() if k.startswith("TRADEFLOW_")}
    found = Path(settings_path) if settings_path else data_home(where) / SETTINGS_FILE
    if settings_path or found.is_file():
        base |= read_settings(found)
    recorded_env = dict(base)
    env = overrides_env(base, strategy=strategy, params=params, sets=sets)

    async def main():
        async with _opened(where, read_only=True) as s:
            recorded = await load_recorded(s, since=since, until=until, symbols=[x.upper() for x in symbols],
                                           run=replay_run)
        total = len(recorded.bars)
        return await asyncio.to_thread(whatif, recorded, env, recorded_env=recorded_env,
                                       progress=lambda done: progress("re-running the bars", done, total))

    with Progress() as progress:
        result = run_async(main())
    if result is None:
        sys.exit(130)
    if as_json:
        click.echo(orjson.dumps(result.to_dict()).decode())
    else:
        click.echo(f"settings of the recorded run: {found}" if settings_path or found.is_file() else
                   f"no {found}: the recorded run's settings are taken to be this TRADEFLOW_* environment "
                   "(give --settings if they were others)", err=True)
        click.echo(format_diff(result, limit=limit))
    if check and not result.identical:
        sys.exit(1)


COMMANDS = (events, trace, store, replay_command, whatif_command)

