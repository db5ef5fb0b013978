"""The audit trail: one JSON line per fill and per closed trade, durable before the fill is acknowledged.

Every line has an `id` (a fill's event id; a trade's is its closing fill's id plus ":trade:N"), and
a line whose id the trail holds is never written again: a redelivered fill, a restart, the rebuild
from history (which re-derives every line, and so restores a lost trail) or a second audit process
alive beside the first adds nothing twice. A fill line carries the event's trace and causation ids,
so `tradeflow trace` can follow it back to its bar.

`AuditTrail` is the port. TRADEFLOW_AUDIT_LOG picks the adapter (read by `replay.store.location`):

    a plain path      JsonlAuditTrail (.jsonl), the default: <data dir>/audit/audit.jsonl, the
                      JSON-lines file as it always was, one line per record, for grep and jq
    sqlite:///path    SqliteAuditTrail (.sqlite): a table in a SQLite file, not a JSON-lines file
    postgresql://…    PostgresAuditTrail (.postgres): a table in PostgreSQL, when audit's storage
                      is on another machine

So a path names the JSON-lines file even when it ends in .sqlite; only the sqlite:/// URL picks the
table. In a table each line is kept as the exact JSON the file would hold, in the order written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal, Protocol

from replay.store.location import Location, parse_location
from replay.store.model import Opening
from services.audit.trail.jsonl import JsonlAuditTrail
from services.audit.trail.sqlite import SqliteAuditTrail

SETTING = "TRADEFLOW_AUDIT_LOG"
DEFAULT_FILE = "audit.jsonl"   # in audit's data folder
Kind = Literal["jsonl", "sqlite", "postgresql"]


class AuditTrail(Protocol):
    """Audit's lines: appended once by id, read back in the order written."""

    where: str   # the path, or the URL with its password hidden

    async def append(self, lines: Sequence[dict]) -> int:
        """Make durable the lines whose id the trail does not hold (a batch's first of each id); how many."""
        ...

    async def read(self) -> list[dict]:
        """Every line, in the order written."""
        ...

    async def count(self) -> int:
        """How many lines the trail holds."""
        ...

    async def close(self) -> None: ...


def locate(value: str | os.PathLike[str], setting: str = SETTING) -> tuple[Kind, Location]:
    """The adapter `value` names and where it is; ConfigError naming `setting` if it names none."""
    where = parse_location(value, setting)
    if where.kind == "sqlite" and not os.fspath(value).strip().lower().startswith("sqlite://"):
        return "jsonl", where   # a plain path: the file users grep, as before
    return where.kind, where


def open_trail(value: str | os.PathLike[str], *, read_only: bool = False, setting: str = SETTING,
               timeout: float | None = None) -> Opening[AuditTrail]:
    """Open the trail at `value` (a path, sqlite:///path or postgresql://…), creating it unless `read_only`;
    ConfigError naming `setting` if it cannot be used (a database: not within `timeout` seconds, by default
    replay.store.pg's). Await it, or enter it to have it closed."""
    kind, where = locate(value, setting)
    if kind == "postgresql":
        from services.audit.trail.postgres import PostgresAuditTrail

        assert where.url is not None
        return Opening[AuditTrail](PostgresAuditTrail.open(where.url, read_only=read_only, setting=setting,
                                                           timeout=timeout))
    assert where.path is not None
    adapter = JsonlAuditTrail if kind == "jsonl" else SqliteAuditTrail
    return Opening[AuditTrail](adapter.open(where.path, read_only=read_only, setting=setting))


async def read(value: str | os.PathLike[str], setting: str = SETTING) -> list[dict]:
    """Every line of the trail at `value`, in the order written; it is opened read-only (nothing created)."""
    async with open_trail(value, read_only=True, setting=setting) as trail:
        return await trail.read()


def shown(value: str | os.PathLike[str]) -> str:
    """`value` as it may be printed: a path as given, a URL with its password hidden."""
    return str(locate(value)[1])


__all__ = ["DEFAULT_FILE", "SETTING", "AuditTrail", "JsonlAuditTrail", "SqliteAuditTrail", "locate",
           "open_trail", "read", "shown"]
