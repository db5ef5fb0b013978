"""What the SQL adapters share: the filters as a WHERE clause (values always parameters) and keyset
paging in (time column, stream_seq, id) order. Each adapter brings its parameter mark (`?`, `%s`),
its subject matcher and its fetch."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from replay.store.model import COLUMNS, Order, OrderColumn, micros

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
