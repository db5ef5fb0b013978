"""Off-loop compute: CPU-heavy work in a process pool, blocking I/O in a thread pool.

    pool = ComputePool(load(PoolSettings, "TRADEFLOW_POOL_"), metrics)
    features = await pool.compute("features", compute_features, closes)     # a picklable function
    rows = await pool.blocking("read_csv", read_rows, path)                  # blocking I/O
    await pool.close()

At most `queue` calls are submitted and not finished at once (TRADEFLOW_POOL_QUEUE); a call
beyond that waits for a slot: a full queue is back-pressure on the caller, never an error or a
drop. Each call's time, queueing included, goes to `tradeflow_offloop_seconds{op}`, and
`stats()` gives per-operation counts and latency for the health API. The process pool starts
its `workers` processes lazily (TRADEFLOW_POOL_WORKERS, default the number of cores);
TRADEFLOW_POOL_KIND=thread runs CPU work on threads instead (for work that releases the GIL,
or where forking is not wanted).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections import defaultdict, deque
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Annotated, Any, Literal

import msgspec

from services.runtime.deathsig import PARENT, die_with_parent
from services.runtime.metrics import Metrics, quantile


class PoolSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_POOL_KIND, _WORKERS, _QUEUE, _IO_THREADS."""

    kind: Literal["process", "thread"] = "process"
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = max(1, os.cpu_count() or 1)
    queue: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    io_threads: Annotated[int, msgspec.Meta(ge=1, le=256)] = 8


class _Op:
    """Counts and recent latencies of one operation."""

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.recent: deque[float] = deque(maxlen=1000)

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.recent)
        out: dict[str, Any] = {"done": self.done, "failed": self.failed}
        if ordered:
            out |= {f"p{round(q * 100)}_ms": round(quantile(ordered, q) * 1000, 3) for q in (0.5, 0.99)}
            out["max_ms"] = round(ordered[-1] * 1000, 3)
        return out


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes forked from a forkserver, not from the service: a service has threads (its I/O
    pool, the loop's default executor), and a child forked while one of them held a lock would wait on
    it forever. The forkserver dies with the service and each worker with the forkserver, even after a
    kill -9 (services/runtime/deathsig.py)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["services.runtime.forkserver_preload"])
    os.environ[PARENT] = str(os.getpid())   # the forkserver checks it is this process's child, even if started late
    return ProcessPoolExecutor(workers, mp_context=context, initializer=die_with_parent)


class ComputePool:
    """A bounded process (or thread) pool for CPU work and a thread pool for blocking I/O."""

    def __init__(self, settings: PoolSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._slots = asyncio.Semaphore(settings.queue)
        self._cpu: Executor = (_process_pool(settings.workers) if settings.kind == "process"
                               else ThreadPoolExecutor(settings.workers, thread_name_prefix="cpu"))
        self._io = ThreadPoolExecutor(settings.io_threads, thread_name_prefix="io")
        self._ops: dict[tuple[str, str], _Op] = defaultdict(_Op)
        self.in_flight = 0
        self.waiting = 0
        self._closed = False

    async def compute(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the CPU pool (a process pool: `fn` and its arguments must pickle)."""
        return await self._run("cpu", self._cpu, op, fn, args)

    async def blocking(self, op: str, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the I/O thread pool: blocking calls that would stall the event loop."""
        return await self._run("io", self._io, op, fn, args)

    async def _run(self, pool: str, executor: Executor, op: str, fn: Callable[..., Any], args: tuple) -> Any:
        if self._closed:
            raise RuntimeError("the compute pool is closed")
        started = time.perf_counter()
        self.waiting += 1
        try:
            await self._slots.acquire()   # a full queue: wait here (back-pressure)
        finally:
            self.waiting -= 1
        self.in_flight += 1
        stats = self._ops[pool, op]
        try:
            result = await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except asyncio.CancelledError:
            raise
        except BaseException:
            stats.failed += 1
            raise
        else:
            stats.done += 1
            return result
        finally:
            self.in_flight -= 1
            self._slots.release()
            elapsed = time.perf_counter() - started
            stats.recent.append(elapsed)
            self.metrics.offloop.labels(self.metrics.service, pool, op).observe(elapsed)

    def stats(self) -> dict[str, Any]:
        s = self.settings
        return {"kind": s.kind, "workers": s.workers, "io_threads": s.io_threads, "queue": s.queue,
                "in_flight": self.in_flight, "waiting": self.waiting,
                "ops": {f"{pool}:{op}": o.stats() for (pool, op), o in sorted(self._ops.items())}}

    async def close(self) -> None:
        """Stop taking work; cancel what has not started, wait for what has (in a thread: it blocks)."""
        self._closed = True
        for executor in (self._cpu, self._io):
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
