"""What the PostgreSQL adapters (event store, fill ledger, audit trail) share: a connection pool opened
with one-line errors that name the setting, and a schema version each component keeps in one table.

psycopg 3 with psycopg_pool's async pool: libpq underneath (so every `postgresql://` URL and
parameter libpq knows works, TLS included), server-side parameters (values never spliced into
SQL), and a pool that replaces broken connections, which is what a service that outlives a
database restart needs.

    schema: tradeflow_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from contracts.errors import ConfigError
from replay.store.location import redact

CONNECT_TIMEOUT = 10.0
_SCHEMA_TABLE = "CREATE TABLE IF NOT EXISTS tradeflow_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"


class DatabaseError(ConfigError):
    """Raised when a database cannot be used at start-up: unreachable, refused, or a newer schema."""


def reason(exc: BaseException) -> str:
    """The first line of a psycopg error, which is libpq's or the server's own words."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


async def open_pool(url: str, *, setting: str, what: str, min_size: int = 1, max_size: int = 4,
                    read_only: bool = False, autocommit: bool = False, check: bool = False,
                    timeout: float = CONNECT_TIMEOUT) -> AsyncConnectionPool:
    """An open pool on `url` whose first connection has been made; DatabaseError naming `setting` (and
    `what` it is for) if none can be, within `timeout` seconds. `autocommit`: each statement its own
    transaction unless in `conn.transaction()` (a read is one round trip, no BEGIN or COMMIT around it).
    `check`: try each connection before lending it (one round trip more), so the connections a database
    restart broke are replaced unseen, rather than each failing one call."""
    try:   # one connection first: a refusal (no server, no such database, bad password) is said at once,
        # where the pool would retry it until `timeout`
        first = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, int(timeout)))
    except psycopg.Error as exc:
        raise DatabaseError(f"{setting}: cannot connect to {redact(url)} ({what}): {reason(exc)}") from None
    await first.close()

    async def configure(conn: psycopg.AsyncConnection) -> None:
        if read_only:
            await conn.execute("SET default_transaction_read_only = on")
            await conn.commit()

    pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False, timeout=timeout,
                               kwargs={"connect_timeout": max(1, int(timeout)), "autocommit": autocommit},
                               configure=configure, name=what,
                               check=AsyncConnectionPool.check_connection if check else None)
    quiet = logging.getLogger("psycopg.pool")   # its retries' warnings would precede our one line
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        await pool.open(wait=True, timeout=timeout)
    except BaseException as exc:
        await pool.close()
        if isinstance(exc, (psycopg.Error, TimeoutError)) or type(exc).__name__ == "PoolTimeout":
            why = await _why(url, exc)
            raise DatabaseError(f"{setting}: cannot connect to {redact(url)} ({what}): {why}") from None
        raise
    finally:
        quiet.setLevel(level)
    return pool


async def _why(url: str, exc: BaseException) -> str:
    """What stopped the first connection: the pool says only that it timed out, so ask libpq once."""
    try:
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=2):
            return reason(exc)
    except psycopg.Error as direct:
        return reason(direct)


async def check_schema(conn: psycopg.AsyncConnection[Any], *, component: str, version: int, setting: str,
                       create: bool) -> bool:
    """Whether `component`'s schema is at `version` in this database (False: none yet). Records `version`
    when `create` and there is none; DatabaseError if the database's is newer than the code's."""
    if not await _has_table(conn):   # only then: a role that may not create tables can use an existing one
        if not create:
            return False
        # two components starting at once on a new database would race on the create: one at a time
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tradeflow_schema'))")
        await conn.execute(_SCHEMA_TABLE)
    row = await (await conn.execute("SELECT version FROM tradeflow_schema WHERE component = %s",
                                    [component])).fetchone()
    if row is None:
        if create:
            await conn.execute("INSERT INTO tradeflow_schema VALUES (%s, %s) ON CONFLICT (component) DO NOTHING",
                               [component, version])
        return False
    if row[0] > version:
        raise DatabaseError(f"{setting}: the database's {component} schema is version {row[0]}, newer than this "
                            f"code's {version}: use a newer tradeflow")
    return True


async def _has_table(conn: psycopg.AsyncConnection[Any]) -> bool:
    row = await (await conn.execute("SELECT to_regclass('tradeflow_schema') IS NOT NULL")).fetchone()
    return bool(row and row[0])

