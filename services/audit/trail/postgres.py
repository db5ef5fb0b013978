"""The audit trail as a table in PostgreSQL (TRADEFLOW_AUDIT_LOG=postgresql://…), for an audit service
whose storage is on another machine.

    audit_trail (seq BIGINT identity PRIMARY KEY, id TEXT UNIQUE, line JSON: the exact JSON line)
    tradeflow_schema: "audit" at SCHEMA_VERSION (replay.store.pg.check_schema)

A batch is one `INSERT ... ON CONFLICT (id) DO NOTHING`, so a line is written once whoever writes it.
Appends take a transaction-level advisory lock: two audit processes alive at once (a replacement
beside a pod that is still stopping) commit one after the other, so `seq` is the order written and
two batches sharing ids never deadlock on each other's keys. `json`, not `jsonb`, keeps the text as
it was given: key order and all.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from contracts.errors import ConfigError, EffectFailed, TradeflowError
from replay.store.location import redact
from replay.store.pg import CONNECT_TIMEOUT, DatabaseError, check_schema, open_pool, reason

SCHEMA_VERSION = 1
COMPONENT = "audit"
_SCHEMA = """CREATE TABLE IF NOT EXISTS audit_trail (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE, line JSON NOT NULL)"""
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tradeflow.audit_trail'))"
_INSERT = """INSERT INTO audit_trail (id, line)
    SELECT id, line::json FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS batch (id, line, n) ORDER BY n
    ON CONFLICT (id) DO NOTHING"""


class PostgresAuditTrail:
    """The trail as a PostgreSQL table, deduplicated by the id's unique key."""

    def __init__(self, pool: AsyncConnectionPool, url: str, *, read_only: bool) -> None:
        self._pool, self.read_only = pool, read_only
        self.where = redact(url)

    @classmethod
    async def open(cls, url: str, *, read_only: bool = False, setting: str,
                   timeout: float | None = None) -> PostgresAuditTrail:
        """The trail in the database at `url` (its table created unless `read_only`); ConfigError naming
        `setting` if it is unreachable (for `timeout` seconds), refuses us, or holds a newer schema."""
        pool = await open_pool(url, setting=setting, what="audit trail", max_size=2, read_only=read_only,
                               timeout=CONNECT_TIMEOUT if timeout is None else timeout)
        try:
            async with pool.connection() as conn:
                await _prepare(conn, url, read_only, setting)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, (psycopg.Error, PoolTimeout)):
                raise DatabaseError(f"{setting}: {redact(url)} (audit trail): {reason(exc)}") from None
            raise
        return cls(pool, url, read_only=read_only)

    async def append(self, lines: Sequence[dict]) -> int:
        """Insert the lines whose id is new, in one transaction; how many were."""
        if self.read_only:
            raise TradeflowError(f"audit trail {self.where} is open read-only")
        if not lines:
            return 0
        ids = [line["id"] for line in lines]
        texts = [orjson.dumps(line).decode() for line in lines]
        try:
            async with self._pool.connection() as conn:   # commits on leaving
                await conn.execute(_LOCK)
                cursor = await conn.execute(_INSERT, [ids, texts])
        except (psycopg.OperationalError, PoolTimeout) as exc:   # connection lost, server restarting: retried
            raise EffectFailed(f"audit trail {self.where}: {reason(exc)}") from exc
        return cursor.rowcount

    async def read(self) -> list[dict]:
        """Every line, in the order written."""
        async with self._pool.connection() as conn:
            rows = await (await conn.execute("SELECT line::text FROM audit_trail ORDER BY seq")).fetchall()
        return [orjson.loads(line) for line, in rows]

    async def count(self) -> int:
        async with self._pool.connection() as conn:
            row = await (await conn.execute("SELECT count(*) FROM audit_trail")).fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        await self._pool.close()


async def _prepare(conn: psycopg.AsyncConnection, url: str, read_only: bool, setting: str) -> None:
    """Check the database holds a trail this code can use (a reader: that it holds one); create it for a writer."""
    if read_only:
        if not await check_schema(conn, component=COMPONENT, version=SCHEMA_VERSION, setting=setting, create=False):
            raise ConfigError(f"{setting}: no audit trail in {redact(url)}")
        return
    await conn.execute(_LOCK)   # two processes creating the table at once would collide
    await check_schema(conn, component=COMPONENT, version=SCHEMA_VERSION, setting=setting, create=True)
    await conn.execute(_SCHEMA)
