"""The paper broker's fill ledger: SQLite, one row per order id, written before a fill is published.

It is the source of truth for what was filled: an order whose id is in the ledger is never
filled again; its recorded fill is re-published instead (same event id, so the stream's
duplicate window drops it if it got there the first time).

The ledger is one execution process's own (execution runs as one replica, and never two on one
durable), so the order ids it holds are also kept in memory: an order it never filled, which is
every new one, costs no read before it is filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import aiosqlite
import msgspec

from contracts.errors import ConfigError
from contracts.events import OrderFilled

_SCHEMA = """CREATE TABLE IF NOT EXISTS fills (
    order_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, ts TEXT NOT NULL, side TEXT NOT NULL,
    quantity REAL NOT NULL, price REAL NOT NULL, commission REAL NOT NULL, body BLOB NOT NULL,
    recorded_at TEXT NOT NULL)"""
_LOOKUP_CHUNK = 500   # well under SQLite's bound-parameter limit
_DECODE = msgspec.json.Decoder(OrderFilled)


class FillLedger:
    """Record fills once by order id; look recorded ones up."""

    def __init__(self, db: aiosqlite.Connection, path: Path, held: set[str]) -> None:
        self._db = db
        self.path = path
        self._held = held   # every order id in the ledger

    @classmethod
    async def open(cls, path: Path) -> FillLedger:
        """Open (creating) the ledger at `path`; ConfigError if it cannot be."""
        db = None
        try:
            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")   # a fill recorded is a fill remembered
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute(_SCHEMA)
            await db.commit()
            async with db.execute("SELECT order_id FROM fills") as cur:
                held = {order_id for (order_id,) in await cur.fetchall()}
        except (aiosqlite.Error, OSError) as exc:
            if db is not None:   # its worker thread would keep the process alive
                await db.close()
            raise ConfigError(f"execution ledger {path}: {exc}") from None
        return cls(db, path, held)

    async def lookup(self, order_ids: Sequence[str]) -> dict[str, OrderFilled]:
        """The recorded fills of those of `order_ids` that were filled."""
        found: dict[str, OrderFilled] = {}
        ids = [order_id for order_id in dict.fromkeys(order_ids) if order_id in self._held]
        for start in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = ids[start:start + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            async with self._db.execute(f"SELECT order_id, body FROM fills WHERE order_id IN ({marks})", chunk) as cur:
                for order_id, body in await cur.fetchall():
                    found[order_id] = _DECODE.decode(body)
        return found

    async def record(self, fills: Sequence[OrderFilled]) -> int:
        """Insert fills not yet recorded, in one transaction; how many were new."""
        if not fills:
            return 0
        now = datetime.now(timezone.utc).isoformat()
        rows = [(f.order_id, f.symbol, f.ts.isoformat(), f.side, f.quantity, f.price, f.commission,
                 msgspec.json.encode(f), now) for f in fills]
        before = self._db.total_changes
        await self._db.executemany("INSERT OR IGNORE INTO fills VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        await self._db.commit()
        self._held.update(f.order_id for f in fills)
        return self._db.total_changes - before

    async def recent(self, limit: int = 100, symbol: str | None = None) -> list[OrderFilled]:
        """The last `limit` fills recorded (of `symbol`), newest first."""
        where, args = ("WHERE symbol = ?", [symbol]) if symbol else ("", [])
        sql = f"SELECT body FROM fills {where} ORDER BY ts DESC, rowid DESC LIMIT ?"
        async with self._db.execute(sql, [*args, limit]) as cur:
            return [_DECODE.decode(body) for (body,) in await cur.fetchall()]

    async def count(self) -> int:
        async with self._db.execute("SELECT count(*) FROM fills") as cur:
            return (await cur.fetchone())[0]

    async def close(self) -> None:
        await self._db.close()
