"""The audit log: one JSON line per fill and per closed trade, appended and fsynced before the
fill is acknowledged.

Every line has an `id` (a fill's event id; a trade's is its closing fill's id plus ":trade:N"),
and ids already in the file are never written again, so a redelivered fill, a restart, or the
rebuild from history (which re-derives lines, and so restores a deleted log) adds nothing twice.
A fill line carries the event's trace and causation ids, so `tradeflow trace` can follow it back
to its bar. Reading the file back is `orjson.loads` per line; a torn last line (a crash mid-write)
is dropped on open and rewritten.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import orjson

from contracts.errors import ConfigError


class AuditLog:
    """An append-only JSON-lines file, deduplicated by line id."""

    def __init__(self, path: Path, ids: set[str]) -> None:
        self.path = path
        self.ids = ids

    @classmethod
    async def open(cls, path: Path) -> AuditLog:
        """Open (or create) the log at `path` and learn the ids it holds; ConfigError if it cannot be."""
        try:
            ids = await asyncio.to_thread(_load_ids, path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"audit log {path}: {exc}") from exc
        return cls(path, ids)

    async def append(self, lines: Sequence[dict]) -> int:
        """Write the lines whose id is new, durably; how many were written."""
        fresh, ids = [], set()
        for line in lines:
            if line["id"] not in self.ids and line["id"] not in ids:
                ids.add(line["id"])
                fresh.append(orjson.dumps(line) + b"\n")
        if fresh:
            await asyncio.to_thread(_append, self.path, b"".join(fresh))
            self.ids |= ids
        return len(fresh)

    def __len__(self) -> int:
        return len(self.ids)


def read(path: Path) -> list[dict]:
    """Every whole line of the audit log at `path`, in the order written."""
    with path.open("rb") as fh:
        return [orjson.loads(raw) for raw in fh if raw.endswith(b"\n")]


def _load_ids(path: Path) -> set[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids: set[str] = set()
    if not path.exists():
        path.touch()
        return ids
    good = 0   # bytes up to the end of the last whole line
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                break  # torn by a crash mid-write: cut below, its fill is still unacknowledged
            try:
                ids.add(orjson.loads(raw)["id"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"line {number} is not an audit record ({exc}); move the file aside") from None
            good += len(raw)
    if good < path.stat().st_size:
        os.truncate(path, good)
    return ids


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
