"""What the SQL adapters share: the filters as a WHERE clause (values always parameters), keyset
paging in (time column, stream_seq, id) order, the row a StoredEvent is kept as, and the read side
(`SqlReads`: query, get, trace, count, last_seq, stats, export). Each adapter brings its table, its
parameter mark (`?`, `%s`), its subject matcher and its fetch; writes are its own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, ClassVar, TypeVar, Unpack

import orjson

from replay.store.model import (
    COLUMNS,
    Filters,
    Order,
    OrderColumn,
    StoredEvent,
    StoreStats,
    Target,
    at,
    export_events,
    micros,
)

T = TypeVar("T")
Fetch = Callable[[str, Sequence[Any]], Awaitable[list[Any]]]
Match = Callable[[str], tuple[str, list[Any]]]
_SEQ_AT = COLUMNS.index("stream_seq")


def column(by: str, *, seq: bool = False) -> str:
    """`by` if it is a column results may be ordered (`seq`: or windowed) by; ValueError otherwise."""
    if by not in ("time", "event_ts", *(("stream_seq",) if seq else ())):
        raise ValueError(f"by must be 'time' or 'event_ts'{' or stream_seq' if seq else ''}, not {by!r}")
    return by


def direction(order: str) -> str:
    """ASC or DESC for `order`; ValueError if it is neither."""
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    return order.upper()


def sql_where(clauses: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def where(match: Match, mark: str, *, since: datetime | None = None, until: datetime | None = None,
          subjects: Sequence[str] = (), symbol: str | None = None, trace_id: str | None = None,
          causation_id: str | None = None, by: OrderColumn = "time", after_seq: int | None = None,
          before_seq: int | None = None) -> tuple[str, list[str], list[Any]]:
    """(order column, SQL conditions, parameters) for a set of filters, `mark` standing for each value."""
    ordered = column(by, seq=True)
    if ordered == "stream_seq" and (since or until):
        raise ValueError("since/until need a time column: by='time' or by='event_ts'")
    clauses: list[str] = []
    params: list[Any] = []
    for sql, value in ((f"{ordered} >= {mark}", since and micros(since)),
                       (f"{ordered} < {mark}", until and micros(until)),
                       (f"symbol = {mark}", symbol), (f"trace_id = {mark}", trace_id),
                       (f"causation_id = {mark}", causation_id), (f"stream_seq > {mark}", after_seq),
                       (f"stream_seq < {mark}", before_seq)):
        if value is not None:
            clauses.append(sql)
            params.append(value)
    if isinstance(subjects, str):
        subjects = (subjects,)  # one pattern, not its letters
    if subjects:
        matches = [match(pattern) for pattern in subjects]
        clauses.append("(" + " OR ".join(sql for sql, _ in matches) + ")")
        params.extend(value for _, values in matches for value in values)
    return ordered, clauses, params


async def pages(fetch: Fetch, select: str, make: Callable[[Sequence[Any]], T], *, ordered: str,
                clauses: list[str], params: list[Any], limit: int | None, order: Order, page: int,
                mark: str) -> AsyncIterator[T]:
    """The rows of `select` under `clauses`, made into `make(row)`, a page at a time: each page starts past
    the last row's (column, stream_seq, id), so no row is read twice or skipped however many tie."""
    key_at = COLUMNS.index(ordered)
    way = direction(order)
    beyond = ">" if way == "ASC" else "<"
    sort = f" ORDER BY {ordered} {way}, stream_seq {way}, id {way} LIMIT {mark}"
    key: list[Any] = []
    left = limit
    while left is None or left > 0:
        size = page if left is None else min(page, left)
        keyed = [*clauses, f"({ordered}, stream_seq, id) {beyond} ({mark}, {mark}, {mark})"] if key else clauses
        rows = await fetch(select + sql_where(keyed) + sort, [*params, *key, size])
        for row in rows:
            yield make(row)
        if len(rows) < size:
            return
        left = None if left is None else left - len(rows)
        key = [rows[-1][key_at], rows[-1][_SEQ_AT], rows[-1][0]]


def row(e: StoredEvent) -> tuple[Any, ...]:
    """The columns (COLUMNS' order) an event is kept as: times in microseconds, headers as JSON text."""
    return (e.id, e.type, e.subject, e.stage, e.symbol, e.source, micros(e.time), micros(e.event_ts), e.trace_id,
            e.causation_id, e.stream_seq, orjson.dumps(e.headers).decode(), e.body, micros(e.recorded_at))


def event(r: Sequence[Any]) -> StoredEvent:
    """The event a row (COLUMNS' order) holds."""
    return StoredEvent(id=r[0], type=r[1], subject=r[2], stage=r[3], symbol=r[4], source=r[5], time=at(r[6]),
                       event_ts=at(r[7]), trace_id=r[8], causation_id=r[9], stream_seq=r[10],
                       headers=orjson.loads(r[11]), body=bytes(r[12]), recorded_at=at(r[13]))


class SqlReads:
    """The read side of a SQL event store; a subclass sets `table`, `mark`, `match`, `_page` and `_fetch`."""

    table: ClassVar[str]
    mark: ClassVar[str]
    _page: int

    @staticmethod
    def match(pattern: str) -> tuple[str, list[Any]]:
        """SQL and parameters matching `subject` against a NATS pattern (the adapter's dialect)."""
        raise NotImplementedError

    async def _fetch(self, statement: str, params: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def query(self, *, limit: int | None = None, order: Order = "asc",
              **filters: Unpack[Filters]) -> AsyncIterator[StoredEvent]:
        """The matching events in (time column, stream_seq, id) order, fetched a page at a time."""
        ordered, clauses, params = where(self.match, self.mark, **filters)
        direction(order)
        return pages(self._fetch, self._select, event, ordered=ordered, clauses=clauses, params=params,
                     limit=limit, order=order, page=self._page, mark=self.mark)

    @property
    def _select(self) -> str:
        return f"SELECT {', '.join(COLUMNS)} FROM {self.table}"

    async def get(self, event_id: str) -> StoredEvent | None:
        """The event with this id, or None."""
        rows = await self._fetch(f"{self._select} WHERE id = {self.mark}", [event_id])
        return event(rows[0]) if rows else None

    async def trace(self, trace_id: str) -> list[StoredEvent]:
        """Every event of one trace (a bar's journey), in time order."""
        return [e async for e in self.query(trace_id=trace_id)]

    async def count(self, **filters: Unpack[Filters]) -> int:
        """How many events match the filters."""
        _, clauses, params = where(self.match, self.mark, **filters)
        return int((await self._fetch(f"SELECT count(*) FROM {self.table}" + sql_where(clauses), params))[0][0])

    async def last_seq(self) -> int:
        """The highest JetStream stream sequence recorded, 0 if none: where the recorder resumes."""
        return int((await self._fetch(f"SELECT coalesce(max(stream_seq), 0) FROM {self.table}", []))[0][0])

    async def stats(self) -> StoreStats:
        """The number of events, their time span and per-stage counts."""
        (n, t0, t1, e0, e1), = await self._fetch(
            f"SELECT count(*), min(time), max(time), min(event_ts), max(event_ts) FROM {self.table}", [])
        stages = await self._fetch(f"SELECT stage, count(*) FROM {self.table} GROUP BY stage ORDER BY stage", [])
        t0, t1, e0, e1 = (None if us is None else at(us) for us in (t0, t1, e0, e1))
        return StoreStats(count=n, first_time=t0, last_time=t1, first_event_ts=e0, last_event_ts=e1,
                          stages=dict(stages))

    async def export(self, target: Target, *, fmt: str = "jsonl", progress: Callable[[int], None] | None = None,
                     **filters: Unpack[Filters]) -> int:
        """Write the matching events to a path or binary file as JSON lines (or Parquet); how many. `progress`
        hears how many are written, a batch at a time."""
        return await export_events(self.query(**filters), target, fmt=fmt, progress=progress)
