"""The writer fence: at most one writer (the recorder) per event store. A second one waits for the
lock, or gives up with StoreBusy after its timeout; the lock goes with its holder, whether the holder
closes the store or dies.

- SQLite: `flock` on a side file `<db>.writer`. The kernel drops it when the process ends, however
  it ends. It is a lock on the open file, so two stores in one process exclude each other too.
- PostgreSQL: a session advisory lock, held on a connection of its own (not the pool's) for the
  store's life. The server drops it when the session ends: a close, a killed process (its socket
  closes), or a host gone silent (the session's TCP keepalives below give up within about 30 s).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from replay.store.model import StoreBusy

if TYPE_CHECKING:
    import psycopg

POLL = 0.05
CONNECT_TIMEOUT = 10
# each end notices a silent other within idle + interval * count seconds: the server then drops the lock,
# and the writer's next write fails (StoreUnavailable) rather than hang
_SERVER_KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "4"}
_CLIENT: dict[str, Any] = {"application_name": "tradeflow event store writer", "connect_timeout": CONNECT_TIMEOUT,
                           "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 4}


def writer_file(path: Path) -> Path:
    """The side file whose lock fences the writers of the SQLite store at `path`."""
    return path.with_name(path.name + ".writer")


async def lock_file(path: Path, *, timeout: float | None, where: str) -> int:
    """A descriptor of `path` holding its exclusive lock, taken within `timeout` seconds (None: however
    long it takes); StoreBusy naming the holder's pid otherwise."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while not _try_flock(fd):
            if deadline is not None and asyncio.get_running_loop().time() >= deadline:
                raise StoreBusy(f"event store {where} has another writer ({_holder(fd)}, a recorder already "
                                f"running?): waited {timeout:g} s for it")
            await asyncio.sleep(POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)   # who holds it, for the next one's message
    except BaseException:
        os.close(fd)
        raise
    return fd


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {pid}" if pid.isdigit() else "held"


async def lock_session(url: str, *, key: int, timeout: float | None, where: str) -> psycopg.AsyncConnection[Any]:
    """A new autocommit connection holding the session advisory lock `key`, taken within `timeout` seconds
    (None: however long it takes); StoreBusy otherwise. psycopg errors (unreachable) pass through."""
    from psycopg import errors

    conn = await _connect(url)
    try:
        async with conn.transaction():   # the wait's limit ends with the transaction, the session's lock does not
            wait_ms = 0 if timeout is None else max(1, round(timeout * 1000))   # 0: no limit
            await conn.execute("SELECT set_config('lock_timeout', %s, true)", [f"{wait_ms}ms"])
            await conn.execute("SELECT pg_advisory_lock(%s)", [key])
    except errors.LockNotAvailable:
        await conn.close()
        raise StoreBusy(f"event store {where} has another writer (a recorder already running?): "
                        f"waited {timeout:g} s for it") from None
    except BaseException:
        await conn.close()
        raise
    return conn


async def try_lock_session(url: str, *, key: int) -> psycopg.AsyncConnection[Any] | None:
    """A new connection holding the lock `key` if it is free right now, else None (how a writer whose session
    was lost takes its lock back, unless another writer took it meanwhile)."""
    conn = await _connect(url)
    try:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", [key])).fetchone()
    except BaseException:
        await conn.close()
        raise
    if row and row[0]:
        return conn
    await conn.close()
    return None


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    """A connection for the lock whose loss both ends notice within about 30 s (the URL's own settings win)."""
    import psycopg
    from psycopg import conninfo

    given = conninfo.conninfo_to_dict(url)
    client = {name: value for name, value in _CLIENT.items() if name not in given}
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **client)
    try:
        for name, value in _SERVER_KEEPALIVES.items():
            await conn.execute("SELECT set_config(%s, %s, false)", [name, value])
    except BaseException:
        await conn.close()
        raise
    return conn
