"""The event store's port and what its adapters share: the recorded event, the filters, the errors,
the export.

Every recorded pipeline event is queryable by time, subject, symbol and trace. Times are
integer microseconds since the epoch (UTC) in every adapter, so ordering and ranges are exact:
`time` is the envelope's time, `event_ts` the body's `ts` (the bar's time). Results come in
(time column, stream_seq, id) order, fetched page by page. An append is idempotent by event id
(re-recording a redelivered message is a no-op).

    TradeflowError
     ├── StoreError             the store cannot be opened: no such folder, not a store, newer schema
     │    └── StoreBusy         another writer holds the store (acquire_writer timed out)
     └── Transient
          └── StoreUnavailable  a write failed for now (locked, disk full, connection lost): retry after a pause
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Generic, Literal, Protocol, TypedDict, TypeVar, Unpack

import msgspec
import orjson

from contracts.codec import Incoming
from contracts.envelope import rfc3339
from contracts.errors import TradeflowError, Transient
from contracts.subjects import stage_of

TimeColumn = Literal["time", "event_ts"]
OrderColumn = Literal["time", "event_ts", "stream_seq"]
Order = Literal["asc", "desc"]
Target = str | os.PathLike[str] | IO[bytes]
S = TypeVar("S")

COLUMNS = ("id", "type", "subject", "stage", "symbol", "source", "time", "event_ts", "trace_id",
           "causation_id", "stream_seq", "headers", "body", "recorded_at")
_EXPORT_BATCH = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)


class StoreError(TradeflowError):
    """Raised when a store cannot be opened: its folder is missing, the file is not one, or its schema is newer."""


class StoreBusy(StoreError):
    """Raised when another process holds the store's writer lock past `acquire_writer`'s timeout."""


class StoreUnavailable(Transient):
    """Raised when a write fails for now (database locked past the busy timeout, disk full)."""


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event: its envelope, the subject's stage and symbol, the NATS headers and the exact body."""

    id: str
    type: str
    subject: str
    stage: str
    symbol: str
    source: str
    time: datetime
    event_ts: datetime
    trace_id: str
    causation_id: str | None = None
    stream_seq: int = 0
    headers: dict[str, str] = {}
    body: bytes
    recorded_at: datetime

    @classmethod
    def of(cls, incoming: Incoming, *, recorded_at: datetime, body: bytes | None = None,
           headers: Mapping[str, str] | None = None) -> StoredEvent:
        """The record of a decoded message, with the body and headers it came as (unless given)."""
        env, event = incoming.envelope, incoming.event
        body = incoming.body if body is None else body
        headers = incoming.headers if headers is None else headers
        return cls(id=env.id, type=env.type, subject=env.subject, stage=stage_of(env.subject),
                   symbol=event.symbol, source=env.source, time=env.time, event_ts=event.ts, trace_id=env.trace_id,
                   causation_id=env.causation_id, stream_seq=env.sequence, headers=dict(headers), body=body,
                   recorded_at=recorded_at)


class StoreStats(msgspec.Struct, frozen=True, kw_only=True):
    """How many events a store holds, their time span, and how many per stage."""

    count: int
    first_time: datetime | None
    last_time: datetime | None
    first_event_ts: datetime | None
    last_event_ts: datetime | None
    stages: dict[str, int]


class Filters(TypedDict, total=False):
    """Which events a query, count or export covers; every filter given must hold."""

    since: datetime | None      # inclusive, on the `by` column
    until: datetime | None      # exclusive, on the `by` column
    subjects: Sequence[str]     # NATS patterns (`data_ready.*`, `rejected.>`); any one may match
    symbol: str | None
    trace_id: str | None
    causation_id: str | None
    by: OrderColumn             # the time column of since/until and of the order (stream_seq: order only)
    after_seq: int | None       # only events with a higher stream sequence
    before_seq: int | None      # only events with a lower stream sequence


class EventStore(Protocol):
    """The port the recorder, replay and what-if use; one adapter per storage."""

    async def append(self, events: Sequence[StoredEvent]) -> int: ...
    def query(self, *, limit: int | None = None, order: Order = "asc",
              **filters: Unpack[Filters]) -> AsyncIterator[StoredEvent]: ...
    async def get(self, event_id: str) -> StoredEvent | None: ...
    async def trace(self, trace_id: str) -> list[StoredEvent]: ...
    async def count(self, **filters: Unpack[Filters]) -> int: ...
    async def last_seq(self) -> int: ...
    async def stats(self) -> StoreStats: ...
    async def compact(self, before: datetime, *, by: TimeColumn = "event_ts") -> int: ...
    async def export(self, target: Target, *, fmt: str = "jsonl", progress: Callable[[int], None] | None = None,
                     **filters: Unpack[Filters]) -> int: ...
    async def acquire_writer(self, timeout: float | None = None) -> None: ...
    async def close(self) -> None: ...


class Opening(Generic[S]):
    """What opening a store returns: await it for the store, or enter it to have it closed on exit."""

    def __init__(self, opening: Coroutine[Any, Any, S]) -> None:
        self._opening = opening

    def __await__(self) -> Generator[Any, None, S]:
        return self._opening.__await__()

    async def __aenter__(self) -> S:
        self._store = await self._opening
        return self._store

    async def __aexit__(self, *exc_info: object) -> None:
        await self._store.close()


def micros(ts: datetime) -> int:
    """Microseconds since the epoch of an aware datetime, exactly."""
    if ts.utcoffset() is None:
        raise ValueError(f"datetime {ts.isoformat()} has no time zone")
    return (ts - _EPOCH) // _MICRO


def at(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def check_pattern(pattern: str) -> list[str]:
    """The tokens of a NATS subject pattern; ValueError if it is malformed.

    `*` is exactly one token, `>` (last only) one or more; a wildcard is a whole token.
    """
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"bad subject pattern {pattern!r}: empty token or white space")
        if token == ">" and i < len(tokens) - 1:
            raise ValueError(f"bad subject pattern {pattern!r}: '>' may only be the last token")
        if token not in ("*", ">") and ("*" in token or ">" in token):
            raise ValueError(f"bad subject pattern {pattern!r}: a wildcard must be a whole token, not in {token!r}")
    return tokens


async def export_events(events: AsyncIterator[StoredEvent], target: Target, *, fmt: str = "jsonl",
                        progress: Callable[[int], None] | None = None) -> int:
    """Write events to a path or binary file as JSON lines or Parquet, a batch at a time off the loop; how many."""
    write = {"jsonl": _jsonl, "parquet": _parquet}.get(fmt)
    if write is None:
        raise ValueError(f"unknown export format {fmt!r}: use 'jsonl' or 'parquet'")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ModuleNotFoundError("Parquet export needs the 'pyarrow' package, which is not installed", name="pyarrow")
    owned = isinstance(target, (str, os.PathLike))
    sink: Any = await asyncio.to_thread(open, target, "wb") if owned else target
    state, count, batch = None, 0, []
    try:
        async for event in events:
            batch.append(event)
            if len(batch) == _EXPORT_BATCH:
                state, count, batch = await asyncio.to_thread(write, sink, batch, state), count + len(batch), []
                if progress is not None:
                    progress(count)
        state, count = await asyncio.to_thread(write, sink, batch, state), count + len(batch)
        if progress is not None:
            progress(count)
    finally:
        await asyncio.to_thread(write, sink, None, state)  # None: the end, close what the writer opened
        if owned:
            await asyncio.to_thread(sink.close)
    return count


def _jsonl(sink: IO[bytes], events: list[StoredEvent] | None, state: None) -> None:
    """Write a batch as JSON lines: one object per event, times in RFC 3339, the body as JSON (not a string)."""
    for e in events or ():
        sink.write(orjson.dumps(
            {"id": e.id, "type": e.type, "subject": e.subject, "stage": e.stage, "symbol": e.symbol,
             "source": e.source, "time": rfc3339(e.time), "event_ts": rfc3339(e.event_ts), "trace_id": e.trace_id,
             "causation_id": e.causation_id, "stream_seq": e.stream_seq, "headers": e.headers,
             "body": orjson.loads(e.body), "recorded_at": rfc3339(e.recorded_at)}, option=orjson.OPT_APPEND_NEWLINE))


def _parquet(sink: IO[bytes], events: list[StoredEvent] | None, writer: Any) -> Any:
    """Write a batch to Parquet (body as JSON text, headers as a map); the writer, opened on the first batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if events is None:
        return writer and writer.close()
    text, utc = pa.string(), pa.timestamp("us", tz="UTC")
    kinds = {"time": utc, "event_ts": utc, "recorded_at": utc, "stream_seq": pa.int64(), "headers": pa.map_(text, text)}
    schema = pa.schema([(column, kinds.get(column, text)) for column in COLUMNS])
    rows = [{c: getattr(e, c) for c in COLUMNS} | {"headers": list(e.headers.items()), "body": e.body.decode()}
            for e in events]
    writer = writer or pq.ParquetWriter(sink, schema)
    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return writer
