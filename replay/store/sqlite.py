"""The embedded event store: one SQLite file in WAL mode, one `events` table, insert-or-ignore by
ce-id. A read-only open never changes the file, so query commands can run beside the recorder.

The one writer (the recorder) holds an exclusive flock(2) on `<file>.writer` beside it: held until
close, dropped by the kernel when the process dies, so a replacement takes over from a killed one."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import urllib.parse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from replay.store import sql
from replay.store.fence import lock_file, writer_file
from replay.store.model import (
    COLUMNS,
    Opening,
    StoredEvent,
    StoreError,
    StoreUnavailable,
    TimeColumn,
    check_pattern,
    micros,
)

SCHEMA_VERSION = 1
_INSERT = f"INSERT OR IGNORE INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, subject TEXT NOT NULL, stage TEXT NOT NULL,
        symbol TEXT NOT NULL, source TEXT NOT NULL, time INTEGER NOT NULL, event_ts INTEGER NOT NULL,
        trace_id TEXT NOT NULL, causation_id TEXT, stream_seq INTEGER NOT NULL, headers TEXT NOT NULL,
        body BLOB NOT NULL, recorded_at INTEGER NOT NULL)""",
    # (time column, stream_seq, id) is both the result order and the paging key
    *(f"CREATE INDEX IF NOT EXISTS events_{name} ON events ({columns})" for name, columns in (
        ("time", "time, stream_seq, id"), ("event_ts", "event_ts, stream_seq, id"), ("subject", "subject"),
        ("stage_time", "stage, time, stream_seq, id"), ("stage_event_ts", "stage, event_ts, stream_seq, id"),
        ("symbol", "symbol, event_ts"), ("trace", "trace_id"), ("causation", "causation_id"), ("seq", "stream_seq"))),
]
# The number of tokens of `subject` minus one.
_DOTS = "(length(subject) - length(replace(subject, '.', '')))"


class SqliteEventStore(sql.SqlReads):
    """The embedded store: `async with SqliteEventStore.open(path) as store`, or `store = await ...open(path)`."""

    table, mark = "events", "?"

    @staticmethod
    def match(pattern: str) -> tuple[str, list[Any]]:
        return subject_match(pattern)

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, page_size: int, read_only: bool = False) -> None:
        self._conn, self.path, self._page, self.read_only = conn, path, page_size, read_only
        self.where = str(path)
        self._lock = asyncio.Lock()  # one connection: a transaction's statements must not interleave with others
        self._writer: int | None = None  # the descriptor holding the writer fence, once acquired

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, read_only: bool = False, must_exist: bool = False,
             page_size: int = 1000, busy_timeout_ms: int = 5000) -> Opening[SqliteEventStore]:
        """Open the store at `path`, creating it unless `read_only` or `must_exist`; StoreError if it cannot be used.

        A read-only open never changes the file (SQLite may add its -wal/-shm side files), so
        query commands can run beside the recorder, or on an archived copy.
        """
        return Opening(cls._open(Path(path), read_only, must_exist or read_only, page_size, busy_timeout_ms))

    @classmethod
    async def _open(cls, path: Path, read_only: bool, must_exist: bool, page_size: int,
                    busy_timeout_ms: int) -> SqliteEventStore:
        if not path.parent.is_dir():
            raise StoreError(f"cannot open event store {path}: folder {path.parent} does not exist")
        if must_exist and not path.is_file():
            raise StoreError(f"no event store at {path} (is the recorder running? give --store or TRADEFLOW_STORE)")
        target = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro" if read_only else path
        conn = aiosqlite.connect(target, isolation_level=None, uri=read_only)
        try:
            await conn
            await _prepare(conn, path, busy_timeout_ms, read_only)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.DatabaseError):  # "file is not a database", "unable to open", ...
                raise StoreError(f"cannot open event store {path}: {exc} (not a tradeflow event store?)") from exc
            raise
        return cls(conn, path, page_size=page_size, read_only=read_only)

    async def close(self) -> None:
        """Close the connection (the WAL is checkpointed by SQLite), and let the next writer in."""
        try:
            await self._conn.close()
        finally:
            if self._writer is not None:
                os.close(self._writer)   # releases the lock
                self._writer = None

    async def acquire_writer(self, timeout: float | None = None) -> None:
        """Become the store's one writer: wait for the lock on `<db>.writer` (held until close() or the
        process ends), StoreBusy after `timeout` seconds (None: wait however long it takes)."""
        if self.read_only:
            raise StoreError(f"event store {self.path} is open read-only")
        if self._writer is None:
            self._writer = await lock_file(writer_file(self.path), timeout=timeout, where=str(self.path))

    async def append(self, events: Sequence[StoredEvent]) -> int:
        """Record events in one transaction, ignoring ids already stored; the number that were new."""
        if not events:
            return 0
        rows = [sql.row(event) for event in events]
        async with self._lock:
            return await self._write(_INSERT, rows, many=True)

    async def compact(self, before: datetime, *, by: TimeColumn = "event_ts") -> int:
        """Delete events older than `before` on the `by` column and give the space back; how many went."""
        column = sql.column(by)
        async with self._lock:
            deleted = await self._write(f"DELETE FROM events WHERE {column} < ?", [micros(before)])
            await self._conn.executescript("PRAGMA incremental_vacuum")  # run to the end, not one page per step
            await self._conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    async def _fetch(self, statement: str, params: Sequence[Any]) -> list[Any]:
        async with self._lock:
            return list(await self._conn.execute_fetchall(statement, params))

    async def _write(self, statement: str, params: Sequence[Any], *, many: bool = False) -> int:
        """Run one write statement in its own transaction; the number of rows changed."""
        if self.read_only:
            raise StoreError(f"event store {self.path} is open read-only")
        try:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = await (self._conn.executemany(statement, params) if many
                                else self._conn.execute(statement, params))
                await self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    await self._conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"event store {self.path}: {exc}") from exc
        return cursor.rowcount


async def _prepare(conn: aiosqlite.Connection, path: Path, busy_timeout_ms: int, read_only: bool) -> None:
    """Set the pragmas and check the file is a store this code can use; create the schema in a new file."""
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    (version,), = await conn.execute_fetchall("PRAGMA user_version")  # reads the header: fails on a non-database
    if version > SCHEMA_VERSION:
        raise StoreError(f"event store {path} has schema version {version}, newer than this code's "
                         f"{SCHEMA_VERSION}: use a newer tradeflow to open it")
    tables = {name for name, in await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if (tables or read_only) and (version != SCHEMA_VERSION or "events" not in tables):
        what = f"tables {', '.join(sorted(tables))[:200]}" if tables else "no tables"
        raise StoreError(f"{path} is not a tradeflow event store (schema version {version}, {what})")
    if read_only:
        return
    await conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect only before the first table exists
    await conn.execute_fetchall("PRAGMA journal_mode = WAL")
    await conn.execute("PRAGMA synchronous = NORMAL")
    await conn.execute("BEGIN IMMEDIATE")
    for statement in _SCHEMA:
        await conn.execute(statement)
    await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    await conn.execute("COMMIT")


def subject_match(pattern: str) -> tuple[str, list[Any]]:
    """SQL and parameters matching `subject` against a NATS pattern; ValueError if it is malformed.

    `*` is exactly one token, `>` (last only) one or more. Literal tokens go in as GLOB-escaped
    parameters, so `_`, `%` and quotes are plain characters, and the match is case-sensitive like
    NATS. Pinning the subject's number of dots to the pattern's makes every `?*` one dot-free token.
    """
    tokens = check_pattern(pattern)
    fixed = tokens[:-1] if tokens[-1] == ">" else tokens
    if not fixed:
        return "1", []  # `>` alone: everything
    # a literal first token is the stage: the (stage, time column, ...) indexes give the rows in order
    stage_sql, stage_params = ("stage = ? AND ", [tokens[0]]) if tokens[0] != "*" else ("", [])
    if "*" not in fixed and fixed is tokens:
        return f"({stage_sql}subject = ?)", [*stage_params, pattern]
    glob = ".".join("?*" if t == "*" else "".join(f"[{c}]" if c in "*?[" else c for c in t) for t in fixed)
    dots = len(fixed) - 1
    sql, params = f"{_DOTS} = {dots} AND subject GLOB ?", [glob]
    if fixed is not tokens:  # `>`: one more `.?*` for each token past the fixed ones
        sql = f"{_DOTS} > {dots} AND subject GLOB (? || replace(hex(zeroblob({_DOTS} - {dots})), '00', '.?*'))"
    return f"({stage_sql}{sql})", [*stage_params, *params]


