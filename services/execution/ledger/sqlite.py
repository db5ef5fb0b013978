"""The embedded fill ledger: one SQLite file (WAL, synchronous FULL), one `fills` table keyed by order id.

Two processes may share the file on one machine (a local disk: SQLite's locking is not to be trusted
over a network filesystem; use PostgreSQL there). `record` takes the write lock first (BEGIN
IMMEDIATE), reads which orders have a fill already, inserts-or-ignores, and reads back the fills that
stand before it commits.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiosqlite

from contracts.errors import ConfigError
from contracts.events import OrderFilled
from replay.store.model import Opening
from services.execution.ledger.port import (
    DECODE,
    ENCODE,
    SCHEMA_VERSION,
    SETTING,
    LedgerUnavailable,
    Recorded,
    first_per_order,
    known,
)

_SCHEMA = """CREATE TABLE IF NOT EXISTS fills (
    order_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, ts TEXT NOT NULL, side TEXT NOT NULL,
    quantity REAL NOT NULL, price REAL NOT NULL, commission REAL NOT NULL, body BLOB NOT NULL,
    recorded_at TEXT NOT NULL)"""
_INSERT = "INSERT OR IGNORE INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_CHUNK = 500   # ids per statement: well under SQLite's bound-parameter limit


class SqliteFillLedger:
    """`await SqliteFillLedger.open(path)`, or `async with SqliteFillLedger.open(path) as ledger`."""

    def __init__(self, db: aiosqlite.Connection, path: Path, held: set[str]) -> None:
        self._db, self.path, self.where = db, path, str(path)
        self._held = held              # order ids known to be in the ledger (a positive cache: see port.py)
        self._lock = asyncio.Lock()    # one connection: a transaction's statements must not interleave

    @classmethod
    def open(cls, path: str | Path, *, busy_timeout_ms: int = 5000) -> Opening[SqliteFillLedger]:
        """Open (creating) the ledger at `path`; ConfigError naming TRADEFLOW_EXECUTION_LEDGER if it cannot be."""
        return Opening(cls._open(Path(path), busy_timeout_ms))

    @classmethod
    async def _open(cls, path: Path, busy_timeout_ms: int) -> SqliteFillLedger:
        db = aiosqlite.connect(path, isolation_level=None)
        try:
            await db
            await _prepare(db, path, busy_timeout_ms)
            held = {order_id for (order_id,) in await db.execute_fetchall("SELECT order_id FROM fills")}
        except BaseException as exc:
            await db.close()   # its worker thread would keep the process alive
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise ConfigError(f"{SETTING}: cannot open the fill ledger {path}: {exc}") from None
            raise
        return cls(db, path, held)

    async def lookup(self, order_ids: Sequence[str]) -> dict[str, OrderFilled]:
        """The recorded fills of those of `order_ids` this ledger knows to be filled (port.py)."""
        ids = known(order_ids, self._held)
        if not ids:
            return {}
        async with self._lock:
            return await _guarded(self._read(ids))

    async def record(self, fills: Sequence[OrderFilled]) -> Recorded:
        """Insert the fills whose order has none yet, in one transaction; the fill that stands for each order,
        and which were inserted now."""
        batch = first_per_order(fills)
        if not batch:
            return Recorded({}, frozenset())
        now = datetime.now(timezone.utc).isoformat()
        rows = [(f.order_id, f.symbol, f.ts.isoformat(), f.side, f.quantity, f.price, f.commission, ENCODE(f), now)
                for f in batch]
        async with self._lock:
            recorded = await _guarded(self._insert(rows, [f.order_id for f in batch]))
        self._held.update(recorded.standing)
        return recorded

    async def _insert(self, rows: list[tuple[Any, ...]], ids: list[str]) -> Recorded:
        db = self._db
        await db.execute("BEGIN IMMEDIATE")
        try:
            before = await self._read(ids)   # under the write lock: what is not there now, this inserts
            await db.executemany(_INSERT, rows)
            standing = before | await self._read([order_id for order_id in ids if order_id not in before])
            await db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        return Recorded(standing, frozenset(standing.keys() - before.keys()))

    async def _read(self, ids: list[str]) -> dict[str, OrderFilled]:
        found: dict[str, OrderFilled] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            sql = f"SELECT order_id, body FROM fills WHERE order_id IN ({','.join('?' * len(chunk))})"
            for order_id, body in await self._db.execute_fetchall(sql, chunk):
                found[order_id] = DECODE(body)
        return found

    async def recent(self, limit: int = 100, symbol: str | None = None) -> list[OrderFilled]:
        """The last `limit` fills recorded (of `symbol`), newest first."""
        where, args = ("WHERE symbol = ?", [symbol]) if symbol else ("", [])
        sql = f"SELECT body FROM fills {where} ORDER BY ts DESC, rowid DESC LIMIT ?"
        async with self._lock:   # not in the middle of a record's transaction
            rows = await _guarded(self._db.execute_fetchall(sql, [*args, limit]))
        return [DECODE(body) for (body,) in rows]

    async def count(self) -> int:
        """How many fills the ledger holds."""
        async with self._lock:
            (n,), = await _guarded(self._db.execute_fetchall("SELECT count(*) FROM fills"))
        return int(n)

    async def close(self) -> None:
        await self._db.close()


async def _prepare(db: aiosqlite.Connection, path: Path, busy_timeout_ms: int) -> None:
    """Set the pragmas, refuse a schema newer than this code's, create the table in a new file."""
    await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    (version,), = await db.execute_fetchall("PRAGMA user_version")   # reads the header: fails on a non-database
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{SETTING}: the fill ledger {path} has schema version {version}, newer than this "
                          f"code's {SCHEMA_VERSION}: use a newer tradeflow")
    await db.execute_fetchall("PRAGMA journal_mode = WAL")
    await db.execute("PRAGMA synchronous = FULL")   # a fill recorded is a fill remembered
    await db.execute("BEGIN IMMEDIATE")
    await db.execute(_SCHEMA)
    await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")   # a file from before versions was version 1
    await db.execute("COMMIT")


async def _guarded(work):
    """`work`'s result; LedgerUnavailable if SQLite says the file cannot be used for now."""
    try:
        return await work
    except sqlite3.OperationalError as exc:   # locked past the busy timeout, disk full, I/O error
        raise LedgerUnavailable(f"{SETTING}: the fill ledger cannot be used for now: {exc}") from exc
