"""The whole suite leaves no process behind: at its end, any process the suite started (each inherits
PYTEST_TRADEFLOW_SESSION from it, orphans too) still alive 10 s later fails the run, is listed and is
killed. Nothing else on the machine (its own servers, another run) is looked at."""

from __future__ import annotations

import os
import time
import uuid

import psutil
import pytest

_MARK = "PYTEST_TRADEFLOW_SESSION"   # not TRADEFLOW_*: `deploy local` gives services none of those
_GRACE = 10.0


def _ours(proc: psutil.Process, session: str) -> bool:
    try:
        return proc.environ().get(_MARK) == session and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _ends_with_us(proc: psutil.Process, me: int) -> bool:
    """multiprocessing's helpers of this very process (its forkserver, its resource tracker): they read a
    pipe from it and end when it does, so they are not left behind."""
    try:
        return proc.ppid() == me and "from multiprocessing." in " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return True


def _left() -> list[psutil.Process]:
    me, session = os.getpid(), os.environ[_MARK]
    return [p for p in psutil.process_iter() if p.pid != me and _ours(p, session) and not _ends_with_us(p, me)]


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ.setdefault(_MARK, uuid.uuid4().hex)   # a pytest-xdist worker keeps its controller's


def pytest_testnodedown(node, error) -> None:
    """pytest-xdist's controller: a worker finished; keep its fault-table rows."""
    from tests.chaos.conftest import take_over

    take_over(node)


def pytest_terminal_summary(terminalreporter) -> None:
    from tests.chaos.conftest import summary

    summary(terminalreporter)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.chaos.conftest import hand_over

    hand_over(session.config)
    if hasattr(session.config, "workerinput") or _MARK not in os.environ:   # xdist's controller checks
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


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL cluster per test process (each xdist worker its own), started on first use."""
    from tests.servers import postgres

    with postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres_server) -> str:
    """The URL of a new, empty PostgreSQL database, this test's own."""
    return postgres_server.database()
