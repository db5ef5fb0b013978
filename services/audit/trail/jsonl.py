"""The audit trail as a JSON-lines file (the default): one `orjson` line per record, appended and
fsynced before the fill is acknowledged; byte for byte the file audit has always written.

Each append takes an exclusive `flock` on the file and first learns the lines written since it last
looked (by another process, or another trail on the same file), so two writers on one machine never
write an id twice. A torn last line (a writer died mid-write, before its fill was acknowledged) is
cut by the next writer, and the lines are written again. A reader takes no lock and changes nothing:
it sees whole lines only. flock does not hold across NFS: beyond one machine use a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import orjson

from contracts.errors import ConfigError, EffectFailed, TradeflowError


class JsonlAuditTrail:
    """An append-only JSON-lines file, deduplicated by line id."""

    def __init__(self, path: Path, *, read_only: bool, setting: str) -> None:
        self.path, self.read_only, self.setting = path, read_only, setting
        self.where = str(path)
        self._ids: set[str] = set()
        self._offset = 0   # bytes of the file learnt so far: whole lines only
        self._lines = 0    # lines learnt so far, for the number in an error
        self._lock = asyncio.Lock()   # one append at a time: they share what was learnt

    @classmethod
    async def open(cls, path: Path, *, read_only: bool = False, setting: str) -> JsonlAuditTrail:
        """The trail at `path` (created unless `read_only`), its ids learnt; ConfigError if it cannot be used."""
        trail = cls(path, read_only=read_only, setting=setting)
        try:
            await asyncio.to_thread(trail._open)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{setting}: audit log {path}: {exc}") from None
        return trail

    def _open(self) -> None:
        if self.read_only:
            with self.path.open("rb") as fh:
                self._learn(fh, cut=False)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as fh:
            self._learn(fh, cut=True)

    async def append(self, lines: Sequence[dict]) -> int:
        """Write the lines whose id is new, durably; how many were written."""
        if self.read_only:
            raise TradeflowError(f"audit log {self.path} is open read-only")
        if not lines:
            return 0
        async with self._lock:
            try:
                return await asyncio.to_thread(self._append, lines)
            except (OSError, ValueError) as exc:   # disk full, or a foreign line appeared: retried
                raise EffectFailed(f"audit log {self.path}: {exc}") from exc

    def _append(self, lines: Sequence[dict]) -> int:
        with self._locked() as fh:
            self._learn(fh, cut=True)
            fresh: dict[str, bytes] = {}
            for line in lines:
                if line["id"] not in self._ids and line["id"] not in fresh:
                    fresh[line["id"]] = orjson.dumps(line) + b"\n"
            if fresh:
                data = b"".join(fresh.values())
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                self._offset, self._lines = self._offset + len(data), self._lines + len(fresh)
                self._ids.update(fresh)
        return len(fresh)

    async def read(self) -> list[dict]:
        """Every whole line, in the order written."""
        return await asyncio.to_thread(read_lines, self.path)

    async def count(self) -> int:
        """How many ids the file holds (learning what other writers added)."""
        async with self._lock:
            await asyncio.to_thread(self._catch_up)
        return len(self._ids)

    def _catch_up(self) -> None:
        with self.path.open("rb") as fh:
            self._learn(fh, cut=False)

    async def close(self) -> None:
        """Nothing is held open between appends."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[BinaryIO]:
        """The file, open for appending and reading, under an exclusive lock (released as it closes)."""
        with self.path.open("a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield fh

    def _learn(self, fh: BinaryIO, *, cut: bool) -> None:
        """Learn the ids of the whole lines past those known; cut a torn last line if `cut` (the lock held)."""
        if os.fstat(fh.fileno()).st_size < self._offset:   # replaced or cut short by hand: learn it again
            self._offset = self._lines = 0
        fh.seek(self._offset)
        for raw in fh:
            if not raw.endswith(b"\n"):
                if cut:   # torn by a crash mid-write: its fill is still unacknowledged
                    os.ftruncate(fh.fileno(), self._offset)
                return
            try:
                self._ids.add(orjson.loads(raw)["id"])
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"line {self._lines + 1} is not an audit record ({exc}); "
                                 "move the file aside") from None
            self._offset, self._lines = self._offset + len(raw), self._lines + 1


def read_lines(path: Path) -> list[dict]:
    """Every whole line of the JSON-lines file at `path`, in the order written."""
    with path.open("rb") as fh:
        return [orjson.loads(raw) for raw in fh if raw.endswith(b"\n")]
