"""Off-loop compute: process and thread pools, bounded queue as back-pressure, per-operation stats."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from contracts.errors import ConfigError
from services.runtime.metrics import Metrics
from services.runtime.pool import ComputePool, PoolSettings
from services.runtime.settings import load


def busy(n: int) -> int:
    """CPU work, in whichever process runs it."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def whose(_: int) -> int:
    return os.getpid()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def explode(_: int) -> None:
    raise ValueError("bad window")


async def test_cpu_work_runs_in_other_processes_and_blocking_io_in_threads():
    pool = ComputePool(PoolSettings(kind="process", workers=2), Metrics("strategy"))
    try:
        pids = set(await asyncio.gather(*(pool.compute("whose", whose, i) for i in range(20))))
        assert os.getpid() not in pids
        assert await pool.compute("busy", busy, 1000) == busy(1000)
        assert await pool.blocking("nap", nap, 0.01) == 0.01
        stats = pool.stats()
        assert stats["ops"]["cpu:whose"]["done"] == 20 and stats["ops"]["io:nap"]["done"] == 1
        assert 0 <= stats["ops"]["cpu:busy"]["p50_ms"] <= stats["ops"]["cpu:busy"]["max_ms"]
    finally:
        await pool.close()


async def test_a_full_queue_makes_callers_wait_and_loses_nothing():
    pool = ComputePool(PoolSettings(kind="thread", workers=4, queue=2), Metrics("data"))
    seen_in_flight, seen_waiting = [], []

    async def watch() -> None:
        while True:
            seen_in_flight.append(pool.in_flight)
            seen_waiting.append(pool.waiting)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(pool.compute("nap", nap, 0.05) for _ in range(8)))
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await pool.close()
    assert results == [0.05] * 8
    assert max(seen_in_flight) == 2 and max(seen_waiting) >= 5
    assert pool.stats()["ops"]["cpu:nap"]["done"] == 8


async def test_a_failing_operation_raises_to_its_caller_and_is_counted():
    pool = ComputePool(PoolSettings(kind="process", workers=1), Metrics("strategy"))
    try:
        with pytest.raises(ValueError, match="bad window"):
            await pool.compute("features", explode, 1)
        assert await pool.compute("busy", busy, 10) == busy(10)   # the pool goes on
        features = pool.stats()["ops"]["cpu:features"]
        assert (features["done"], features["failed"]) == (0, 1)
    finally:
        await pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        await pool.compute("busy", busy, 10)


@pytest.mark.parametrize("name, value", [("KIND", "gpu"), ("WORKERS", "0"), ("WORKERS", "-2"), ("QUEUE", "0"),
                                         ("QUEUE", "many"), ("IO_THREADS", "100000")])
def test_bad_pool_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=f"TRADEFLOW_POOL_{name}"):
        load(PoolSettings, "TRADEFLOW_POOL_", {f"TRADEFLOW_POOL_{name}": value})


_SERVICE = """
import asyncio, os, sys
from services.runtime.metrics import Metrics
from services.runtime.pool import ComputePool, PoolSettings
from tests.unit.test_pool import whose

async def main():
    pool = ComputePool(PoolSettings(kind="process", workers=2), Metrics("strategy"))
    pids = set(await asyncio.gather(*(pool.compute("whose", whose, i) for i in range(20))))
    print(" ".join(map(str, sorted(pids))), flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_pool_processes_die_with_a_service_killed_with_9():
    service = subprocess.Popen([sys.executable, "-c", _SERVICE], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parents[2])
    try:
        workers = [int(pid) for pid in service.stdout.readline().split()]
        assert len(workers) == 2, "the pool did not start its workers"
        started = psutil.Process(service.pid).children(recursive=True)
        assert {p.pid for p in started} >= set(workers)   # the forkserver, and the workers under it
    finally:
        service.kill()
        service.wait()
    gone, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left behind after a kill -9 of their service: {[p.cmdline()[:3] for p in alive]}"


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_pool_process_whose_parent_died_before_it_could_ask_exits_at_once(how):
    """The race a kill -9 of a service during its forkserver's start-up left open: reparented already, the
    process would have taken its new parent for the one to die with, and lived on."""
    import os
    import subprocess
    import sys
    code = ("from services.runtime.deathsig import die_with_parent; "
            + ("die_with_parent(expected=2**22 + 12345)" if how == "argument" else "die_with_parent()")
            + "; print('alive')")
    env = dict(os.environ, TRADEFLOW_DEATHSIG_PARENT=str(2**22 + 12345)) if how == "environment" else None
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert (done.returncode, done.stdout) == (1, "")


def test_a_pool_process_with_its_parent_alive_goes_on():
    import os
    import subprocess
    import sys
    code = "from services.runtime.deathsig import die_with_parent; die_with_parent(); print('alive')"
    env = dict(os.environ, TRADEFLOW_DEATHSIG_PARENT=str(os.getpid()))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert (done.returncode, done.stdout.strip()) == (0, "alive")
