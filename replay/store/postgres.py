"""The shared event store: one PostgreSQL table, `tradeflow_events`, with the SQLite store's columns,
order and meaning, so that every query gives the same answer on either. Times are BIGINT microseconds
(as in SQLite, so ordering is exact and identical), the body BYTEA, the headers the same JSON text;
the text columns compare byte by byte (`COLLATE "C"`), as SQLite's do, whatever the database's locale.
Appends are `INSERT ... ON CONFLICT (id) DO NOTHING`, one transaction per batch. It may share a
database with other applications: its tables are named `tradeflow_*`.

Readers never skip a row committed late. A reader that resumes after a stream sequence (the
recorder's `last_seq`, replay's `after_seq`) counts on this: once it has seen sequence N, no row
below N appears afterwards. Two concurrent writers would break it: transaction A inserts sequences
5-9, transaction B inserts 10-14 and commits first; a reader between the two commits sees 10-14,
resumes after 14, and never reads 5-9 once A commits. (Under MVCC the order rows become visible in is
the order of commits, not of sequences or of inserts.) The writer fence makes that impossible here:
one writer per store (`acquire_writer`: a session advisory lock, so a second recorder waits), whose
writes all go through the one session that holds the lock, one transaction at a time, in the order
they were called; and the recorder appends batch after batch in the stream's order, retrying a
failed batch before it fetches the next. Commits therefore land in sequence order, and whatever a
reader sees below its resume point is already all there is. If the writer's session is lost (a
database restart, a cut link), the write fails (StoreUnavailable) and the next one first takes the
lock back, or stops with StoreBusy if another writer has it by then: never two writers at once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from replay.store import sql
from replay.store.fence import lock_session, try_lock_session
from replay.store.location import redact
from replay.store.model import (
    COLUMNS,
    Opening,
    StoredEvent,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    TimeColumn,
    check_pattern,
    micros,
)
from replay.store.pg import DatabaseError, check_schema, open_pool, reason

SCHEMA_VERSION = 1
COMPONENT = "events"
TABLE = "tradeflow_events"
_INSERT = (f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
           "ON CONFLICT (id) DO NOTHING")


def _key(name: str) -> int:
    """A stable 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


WRITER_KEY = _key("tradeflow.events.writer")     # the writer fence, per database
_SCHEMA_KEY = _key("tradeflow.events.schema")    # two first opens at once create the tables once
_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id TEXT COLLATE "C" PRIMARY KEY, type TEXT NOT NULL, subject TEXT COLLATE "C" NOT NULL,
        stage TEXT COLLATE "C" NOT NULL, symbol TEXT COLLATE "C" NOT NULL, source TEXT NOT NULL,
        time BIGINT NOT NULL, event_ts BIGINT NOT NULL, trace_id TEXT COLLATE "C" NOT NULL,
        causation_id TEXT COLLATE "C", stream_seq BIGINT NOT NULL, headers TEXT NOT NULL, body BYTEA NOT NULL,
        recorded_at BIGINT NOT NULL)""",
    # the SQLite store's indexes: (time column, stream_seq, id) is both the result order and the paging key
    *(f"CREATE INDEX IF NOT EXISTS {TABLE}_{name} ON {TABLE} ({columns})" for name, columns in (
        ("time", "time, stream_seq, id"), ("event_ts", "event_ts, stream_seq, id"), ("subject", "subject"),
        ("stage_time", "stage, time, stream_seq, id"), ("stage_event_ts", "stage, event_ts, stream_seq, id"),
        ("symbol", "symbol, event_ts"), ("trace", "trace_id"), ("causation", "causation_id"), ("seq", "stream_seq"))),
]
Connection = psycopg.AsyncConnection[Any]


class PostgresEventStore(sql.SqlReads):
    """The shared store: `async with PostgresEventStore.open(url) as store`, or `store = await ...open(url)`."""

    table, mark = TABLE, "%s"

    @staticmethod
    def match(pattern: str) -> tuple[str, list[Any]]:
        return subject_match(pattern)

    def __init__(self, pool: AsyncConnectionPool, url: str, *, page_size: int, read_only: bool = False) -> None:
        self._pool, self._url, self._page, self.read_only = pool, url, page_size, read_only
        self.where = redact(url)
        self._fence: Connection | None = None   # the writer's session, holding the lock, once acquired
        self._writer = False
        self._writing = asyncio.Lock()           # the writer's transactions, one at a time, in call order

    @classmethod
    def open(cls, url: str, *, read_only: bool = False, must_exist: bool = False, page_size: int = 1000,
             setting: str = "TRADEFLOW_STORE") -> Opening[PostgresEventStore]:
        """Open the store in the database at `url`, creating its tables unless `read_only` or `must_exist`;
        StoreError if there is none then, DatabaseError (naming `setting`) if the database cannot be used.

        A read-only open is a read-only session: it can change nothing, even by mistake.
        """
        return Opening(cls._open(url, read_only, must_exist or read_only, page_size, setting))

    @classmethod
    async def _open(cls, url: str, read_only: bool, must_exist: bool, page_size: int,
                    setting: str) -> PostgresEventStore:
        pool = await open_pool(url, setting=setting, what="event store", read_only=read_only, autocommit=True,
                               check=True)
        try:
            async with pool.connection() as conn, conn.transaction():
                if not must_exist:
                    await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_SCHEMA_KEY])
                found = await check_schema(conn, component=COMPONENT, version=SCHEMA_VERSION, setting=setting,
                                           create=not must_exist)
                if not found and must_exist:
                    raise StoreError(f"no event store in {redact(url)} (is the recorder running? give --store "
                                     f"or {setting})")
                for statement in () if found else _SCHEMA:
                    await conn.execute(statement)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error):   # no right to create the tables, ...
                raise DatabaseError(f"{setting}: cannot use {redact(url)} as the event store: {reason(exc)}") from None
            raise
        return cls(pool, url, page_size=page_size, read_only=read_only)

    async def close(self) -> None:
        """Close the pool, and the writer's session (which lets the next writer in)."""
        try:
            if self._fence is not None:
                await self._fence.close()
                self._fence = None
        finally:
            await self._pool.close()

    async def acquire_writer(self, timeout: float | None = None) -> None:
        """Become the store's one writer: wait for the database's writer lock (held by a session of this
        store's own until close(), or until the process or its session dies), StoreBusy after `timeout`
        seconds (None: wait however long it takes). From then on every write goes through that session."""
        if self.read_only:
            raise StoreError(f"event store {self.where} is open read-only")
        if self._writer:
            return
        try:
            self._fence = await lock_session(self._url, key=WRITER_KEY, timeout=timeout, where=self.where)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"event store {self.where}: {reason(exc)}") from exc
        self._writer = True

    async def append(self, events: Sequence[StoredEvent]) -> int:
        """Record events in one transaction, ignoring ids already stored; the number that were new."""
        if not events:
            return 0
        rows = [sql.row(event) for event in events]

        async def insert(conn: Connection) -> int:
            async with conn.cursor() as cursor:
                await cursor.executemany(_INSERT, rows)
                return cursor.rowcount

        return await self._write(insert)

    async def compact(self, before: datetime, *, by: TimeColumn = "event_ts") -> int:
        """Delete events older than `before` on the `by` column and vacuum the table (its space becomes
        free for new rows); how many went."""
        column, cutoff = sql.column(by), micros(before)

        async def delete(conn: Connection) -> int:
            return (await conn.execute(f"DELETE FROM {TABLE} WHERE {column} < %s", [cutoff])).rowcount

        deleted = await self._write(delete)
        await self._fetch(f"VACUUM {TABLE}", [], rows=False)   # outside a transaction: the pool is autocommit
        return deleted

    async def _fetch(self, statement: str, params: Sequence[Any], *, rows: bool = True) -> list[Any]:
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(statement, params)
                return await cursor.fetchall() if rows else []
        except psycopg.OperationalError as exc:   # the connection lost, the pool's wait timed out, ...
            raise StoreUnavailable(f"event store {self.where}: {reason(exc)}") from exc

    async def _write(self, work: Callable[[Connection], Awaitable[int]]) -> int:
        """Run `work` in one transaction, on the writer's session once acquired; its result."""
        if self.read_only:
            raise StoreError(f"event store {self.where} is open read-only")
        try:
            if not self._writer:
                async with self._pool.connection() as conn, conn.transaction():
                    return await work(conn)
            async with self._writing:
                conn = await self._writer_session()
                async with conn.transaction():
                    return await work(conn)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"event store {self.where}: {reason(exc)}") from exc

    async def _writer_session(self) -> Connection:
        """The session holding the writer lock; after it was lost, a new one that takes the lock back,
        StoreBusy if another writer holds it now."""
        if self._fence is not None and not self._fence.closed and not self._fence.broken:
            return self._fence
        if self._fence is not None:
            await self._fence.close()
            self._fence = None
        self._fence = await try_lock_session(self._url, key=WRITER_KEY)
        if self._fence is None:
            raise StoreBusy(f"event store {self.where}: this writer's session was lost and another writer holds "
                            "the store now: stopping rather than write beside it")
        return self._fence


_REGEX_SPECIAL = frozenset(".^$*+?()[]{}|\\")


def subject_match(pattern: str) -> tuple[str, list[Any]]:
    """SQL and parameters matching `subject` against a NATS pattern; ValueError if it is malformed.

    `*` is exactly one token, `>` (last only) one or more. The pattern becomes an anchored regular
    expression with every character of a literal token escaped that a regex would read otherwise
    (so `_`, `%` and quotes are plain, and the match is case-sensitive like NATS), given as a
    parameter. A literal first token is the stage, so the (stage, time column, ...) indexes serve.
    """
    tokens = check_pattern(pattern)
    fixed = tokens[:-1] if tokens[-1] == ">" else tokens
    if not fixed:
        return "TRUE", []  # `>` alone: everything
    stage_sql, stage_params = ("stage = %s AND ", [tokens[0]]) if tokens[0] != "*" else ("", [])
    if "*" not in fixed and fixed is tokens:
        return f"({stage_sql}subject = %s)", [*stage_params, pattern]
    body = r"\.".join("[^.]+" if t == "*" else "".join("\\" + c if c in _REGEX_SPECIAL else c for c in t)
                      for t in fixed)
    tail = r"(\.[^.]+)+" if fixed is not tokens else ""
    return f"({stage_sql}subject ~ %s)", [*stage_params, f"^{body}{tail}$"]
