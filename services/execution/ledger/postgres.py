"""The shared fill ledger: a PostgreSQL table `fills` keyed by order id, for execution processes on any host.

`record` is one `INSERT ... ON CONFLICT (order_id) DO NOTHING RETURNING order_id`: the fills it
returns are the ones it inserted; for the others a second statement, in the same transaction, reads
the fill that stands. Under READ COMMITTED (PostgreSQL's default) an insert that meets a row another
transaction has not committed yet waits for it, and the read after it sees it; under REPEATABLE READ
the insert fails with a serialization error instead, which is retried (LedgerUnavailable). Rows are
inserted in order id order, so two writers of overlapping batches never deadlock.

    schema (component "fills", version 1):
    fills (order_id TEXT PRIMARY KEY, symbol, ts TIMESTAMPTZ, side, quantity, price, commission,
           body BYTEA (the fill's JSON), recorded_at TIMESTAMPTZ, seq BIGINT identity (insertion order))
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from contracts.events import OrderFilled
from replay.store.location import redact
from replay.store.model import Opening
from replay.store.pg import CONNECT_TIMEOUT, DatabaseError, check_schema, open_pool, reason
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

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS fills (
        order_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, ts TIMESTAMPTZ NOT NULL, side TEXT NOT NULL,
        quantity DOUBLE PRECISION NOT NULL, price DOUBLE PRECISION NOT NULL,
        commission DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL,
        recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(), seq BIGINT GENERATED ALWAYS AS IDENTITY)""",
    "CREATE INDEX IF NOT EXISTS fills_recent ON fills (ts, seq)",
    "CREATE INDEX IF NOT EXISTS fills_symbol_recent ON fills (symbol, ts, seq)",
]
_INSERT = """INSERT INTO fills (order_id, symbol, ts, side, quantity, price, commission, body)
    SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::float8[], %s::float8[],
                         %s::float8[], %s::bytea[])
    ON CONFLICT (order_id) DO NOTHING RETURNING order_id"""
_READ = "SELECT order_id, body FROM fills WHERE order_id = ANY(%s)"
_FOR_NOW = (psycopg.OperationalError, PoolTimeout)   # connection lost, server restarting, serialization failure


class PostgresFillLedger:
    """`await PostgresFillLedger.open(url)`, or `async with PostgresFillLedger.open(url) as ledger`."""

    def __init__(self, pool: AsyncConnectionPool, url: str, held: set[str]) -> None:
        self._pool, self.where = pool, redact(url)
        self._held = held   # order ids known to be in the ledger (a positive cache: see port.py)

    @classmethod
    def open(cls, url: str, *, timeout: float = CONNECT_TIMEOUT) -> Opening[PostgresFillLedger]:
        """Open the ledger in the database at `url`, creating its table; ConfigError naming
        TRADEFLOW_EXECUTION_LEDGER if it cannot be (unreachable, refused, a newer schema)."""
        return Opening(cls._open(url, timeout))

    @classmethod
    async def _open(cls, url: str, timeout: float) -> PostgresFillLedger:
        pool = await open_pool(url, setting=SETTING, what="fill ledger", timeout=timeout)
        try:
            async with pool.connection() as conn:   # check_schema's lock, held to the commit: one creator at a time
                await check_schema(conn, component="fills", version=SCHEMA_VERSION, setting=SETTING, create=True)
                for statement in _SCHEMA:
                    await conn.execute(statement)
                rows = await (await conn.execute("SELECT order_id FROM fills")).fetchall()
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error):   # no rights to create the table, ...
                raise DatabaseError(f"{SETTING}: cannot open the fill ledger in {redact(url)}: {reason(exc)}") \
                    from None
            raise
        return cls(pool, url, {order_id for (order_id,) in rows})

    async def lookup(self, order_ids: Sequence[str]) -> dict[str, OrderFilled]:
        """The recorded fills of those of `order_ids` this ledger knows to be filled (port.py)."""
        ids = known(order_ids, self._held)
        if not ids:
            return {}
        async with self._connection() as conn:
            return await _read(conn, ids)

    async def record(self, fills: Sequence[OrderFilled]) -> Recorded:
        """Insert the fills whose order has none yet, in one transaction; the fill that stands for each order,
        and which were inserted now."""
        batch = first_per_order(fills)
        if not batch:
            return Recorded({}, frozenset())
        columns = [[f.order_id for f in batch], [f.symbol for f in batch], [f.ts for f in batch],
                   [f.side for f in batch], [f.quantity for f in batch], [f.price for f in batch],
                   [f.commission for f in batch], [ENCODE(f) for f in batch]]
        async with self._connection() as conn:
            inserted = {order_id for (order_id,) in await (await conn.execute(_INSERT, columns)).fetchall()}
            standing = {f.order_id: f for f in batch if f.order_id in inserted}
            others = [f.order_id for f in batch if f.order_id not in inserted]
            if others:   # recorded before: by this process, or by another (committed, or waited for)
                standing |= await _read(conn, others)
        self._held.update(standing)
        return Recorded(standing, frozenset(inserted))

    async def recent(self, limit: int = 100, symbol: str | None = None) -> list[OrderFilled]:
        """The last `limit` fills recorded (of `symbol`), newest first."""
        where, args = ("WHERE symbol = %s", [symbol]) if symbol else ("", [])
        async with self._connection() as conn:
            cur = await conn.execute(f"SELECT body FROM fills {where} ORDER BY ts DESC, seq DESC LIMIT %s",
                                     [*args, limit])
            return [DECODE(body) for (body,) in await cur.fetchall()]

    async def count(self) -> int:
        """How many fills the ledger holds."""
        async with self._connection() as conn:
            row = await (await conn.execute("SELECT count(*) FROM fills")).fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self._pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for one transaction, committed on a clean exit; LedgerUnavailable when the
        database cannot be used for now."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except _FOR_NOW as exc:
            raise LedgerUnavailable(f"{SETTING}: the fill ledger cannot be used for now: {reason(exc)}") from exc


async def _read(conn: psycopg.AsyncConnection[Any], ids: list[str]) -> dict[str, OrderFilled]:
    cur = await conn.execute(_READ, [ids])
    return {order_id: DECODE(body) for order_id, body in await cur.fetchall()}
