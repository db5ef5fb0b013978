"""The audit trail as a table in a SQLite file (TRADEFLOW_AUDIT_LOG=sqlite:///path): WAL, synchronous
FULL (a line committed is a line kept), insert-or-ignore by id; `seq` keeps the order written.

    audit_trail (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, line TEXT: the exact JSON line)
    tradeflow_schema (component TEXT PRIMARY KEY, version INTEGER): "audit" at SCHEMA_VERSION
"""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import aiosqlite
import orjson

from contracts.errors import ConfigError, EffectFailed, TradeflowError

SCHEMA_VERSION = 1
COMPONENT = "audit"
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS tradeflow_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_trail (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
    "line TEXT NOT NULL)",
    f"INSERT INTO tradeflow_schema VALUES ('{COMPONENT}', {SCHEMA_VERSION}) ON CONFLICT (component) DO NOTHING",
]
_INSERT = "INSERT INTO audit_trail (id, line) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"


class SqliteAuditTrail:
    """The trail as a SQLite table, deduplicated by the id's unique key."""

    def __init__(self, conn: aiosqlite.Connection, path: Path, *, read_only: bool) -> None:
        self._conn, self.path, self.read_only = conn, path, read_only
        self.where = f"sqlite:///{path}"
        self._lock = asyncio.Lock()   # one connection: a transaction's statements must not interleave

    @classmethod
    async def open(cls, path: Path, *, read_only: bool = False, setting: str,
                   busy_timeout_ms: int = 5000) -> SqliteAuditTrail:
        """The trail in the SQLite file at `path` (created unless `read_only`); ConfigError if it cannot be used."""
        try:
            if read_only and not path.is_file():
                raise ConfigError(f"{setting}: no audit trail at {path}")
            if not read_only:
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{setting}: audit trail {path}: {exc}") from None
        target = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro" if read_only else str(path)
        conn = aiosqlite.connect(target, isolation_level=None, uri=read_only)
        try:
            await conn
            await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            await _prepare(conn, path, read_only, setting)
        except BaseException as exc:
            await conn.close()   # its worker thread would keep the process alive
            if isinstance(exc, sqlite3.Error):   # not a database, unable to open, locked
                raise ConfigError(f"{setting}: audit trail {path}: {exc}") from None
            raise
        return cls(conn, path, read_only=read_only)

    async def append(self, lines: Sequence[dict]) -> int:
        """Insert the lines whose id is new, in one transaction; how many were."""
        if self.read_only:
            raise TradeflowError(f"audit trail {self.where} is open read-only")
        if not lines:
            return 0
        rows = [(line["id"], orjson.dumps(line).decode()) for line in lines]
        async with self._lock:
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                try:
                    cursor = await self._conn.executemany(_INSERT, rows)
                    await self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        await self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:   # locked past the busy timeout, disk full: retried
                raise EffectFailed(f"audit trail {self.where}: {exc}") from exc
        return cursor.rowcount

    async def read(self) -> list[dict]:
        """Every line, in the order written."""
        async with self._lock:
            rows = await self._conn.execute_fetchall("SELECT line FROM audit_trail ORDER BY seq")
        return [orjson.loads(line) for line, in rows]

    async def count(self) -> int:
        async with self._lock:
            (n,), = await self._conn.execute_fetchall("SELECT count(*) FROM audit_trail")
        return int(n)

    async def close(self) -> None:
        await self._conn.close()


async def _prepare(conn: aiosqlite.Connection, path: Path, read_only: bool, setting: str) -> None:
    """Check the file holds a trail this code can use (a reader: that it holds one); create it for a writer."""
    if not read_only:
        await conn.execute_fetchall("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("BEGIN IMMEDIATE")
    try:
        version = await _version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigError(f"{setting}: the database's {COMPONENT} schema is version {version}, newer than this "
                              f"code's {SCHEMA_VERSION}: use a newer tradeflow")
        if read_only:
            if version is None:
                raise ConfigError(f"{setting}: no audit trail in {path}")
            return
        for statement in _SCHEMA:
            await conn.execute(statement)
        await conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")


async def _version(conn: aiosqlite.Connection) -> int | None:
    """The audit schema's version in this file, None if it has none."""
    tables = await conn.execute_fetchall("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                         "name = 'tradeflow_schema'")
    if not tables:
        return None
    rows = list(await conn.execute_fetchall("SELECT version FROM tradeflow_schema WHERE component = ?",
                                            [COMPONENT]))
    return int(rows[0][0]) if rows else None
