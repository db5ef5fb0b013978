"""The whole suite leaves no process behind: at its end, any nats-server, redis-server, service or
compute-pool process started while it ran (and still alive 10 s later) fails the run, is listed and
is killed. Processes that were running before the suite (the machine's own servers) are not looked at."""

from __future__ import annotations

import os
import time

import psutil
import pytest

_OURS = ("nats-server", "redis-server", "services.cli", "multiprocessing.forkserver", "multiprocessing.spawn",
         "from multiprocessing")
_GRACE = 10.0
_before: set[int] = set()


def _ours(proc: psutil.Process) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(marker in cmdline for marker in _OURS)


def _left() -> list[psutil.Process]:
    me = os.getpid()
    return [p for p in psutil.process_iter() if p.pid not in _before and p.pid != me and _ours(p)
            and p.status() != psutil.STATUS_ZOMBIE]


def pytest_sessionstart(session: pytest.Session) -> None:
    _before.update(p.pid for p in psutil.process_iter())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):   # a worker of pytest-xdist: the controller checks
        return
    deadline = time.monotonic() + _GRACE
    left = _left()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = _left()
    if not left:
        return
    lines = []
    for proc in left:
        try:
            lines.append(f"  pid {proc.pid} (parent {proc.ppid()}): {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    if lines:
        session.config.get_terminal_writer().line("processes left behind by the test suite (killed now):\n"
                                                  + "\n".join(lines), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
