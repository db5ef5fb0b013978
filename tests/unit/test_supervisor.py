"""What a supervisor starts dies with it, however it dies (a supervisor killed with -9 leaves nothing),
and is restarted as its restart policy says."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from contracts.errors import ConfigError
from services.ops.supervisor import (CRASH_LOOP, HEALTHY_AFTER, Proc, RestartPolicy, Supervisor, backoff,
                                 failed_in_a_row)

SUPERVISOR = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from services.ops.supervisor import Proc, Supervisor

    async def main():
        supervisor = Supervisor()
        proc = await supervisor.start(Proc("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], {},
                                           Path(sys.argv[1])))
        print(proc.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
""")


def test_a_supervisor_killed_with_9_takes_what_it_started_with_it(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(tmp_path / "sleeper.log")],
                              stdout=subprocess.PIPE, text=True, cwd=str(tmp_path.parent), env=None)
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running() and child.ppid() == parent.pid
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, "outlived its supervisor"
    finally:
        parent.kill()


def exits(code: int, after: float = 0.0) -> list[str]:
    return [sys.executable, "-c", f"import sys, time; time.sleep({after}); sys.exit({code})"]


async def supervised(tmp_path, argv, policy: str, until, healthy_after: float = HEALTHY_AFTER,
                     timeout: float = 20.0) -> Proc:
    """Start `argv` under `policy`; return once `until(proc)` holds or the supervisor let it go."""
    supervisor = Supervisor(healthy_after=healthy_after)
    proc = await supervisor.start(Proc("p", argv, {}, tmp_path / "p.log", restart=RestartPolicy.parse(policy)))
    try:
        deadline = time.monotonic() + timeout
        while not (until(proc) or proc.watcher.done()) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls its record
            await asyncio.sleep(0.02)
        return proc
    finally:
        await supervisor.stop_all()


@pytest.mark.parametrize("policy, code, restarted", [
    ("no", 3, False), ("no", 0, False),
    ("on-failure", 3, True), ("on-failure", 0, False), ("on-failure", 75, True),   # 75: asked to restart
    ("always", 0, True), ("unless-stopped", 0, True),
])
async def test_a_process_is_restarted_as_its_policy_says(tmp_path, policy, code, restarted):
    proc = await supervised(tmp_path, exits(code), policy, until=lambda p: p.restarts)
    assert proc.exits[0] == code
    assert (proc.restarts == 1) is restarted


async def test_a_killed_process_is_a_failure():
    assert RestartPolicy.parse("on-failure").restarts_after(-9)


async def test_a_crash_loop_is_given_up_on_loudly(tmp_path, caplog):
    proc = await supervised(tmp_path, exits(1), "on-failure:2", until=lambda p: p.gave_up)
    assert proc.exits == [1, 1, 1] and proc.restarts == 2 and proc.gave_up
    assert "giving up on it" in caplog.text


async def test_a_healthy_run_starts_the_backoff_again(tmp_path):
    """Each run stays up longer than healthy_after: every restart is the first of a series (0.5 s), and
    the crash-loop limit never comes."""
    proc = await supervised(tmp_path, exits(1, after=0.3), "on-failure:1", until=lambda p: p.restarts >= 3,
                            healthy_after=0.2)
    assert proc.exits == [1, 1, 1] and proc.failed == 1 and not proc.gave_up


def test_the_backoff_doubles_to_its_cap_and_counts_failed_runs_in_a_row():
    assert [backoff(n) for n in (1, 2, 3, 7, 50)] == [0.5, 1.0, 2.0, 30.0, 30.0]
    assert failed_in_a_row(4, ran=1.0) == 5 and failed_in_a_row(4, ran=HEALTHY_AFTER) == 1
    assert not RestartPolicy().gives_up(CRASH_LOOP) and RestartPolicy().gives_up(CRASH_LOOP + 1)


@pytest.mark.parametrize("text", ["sometimes", "on-failure:", "on-failure:x", "always:3", "", "no:1"])
def test_a_policy_compose_does_not_know_is_refused(text):
    with pytest.raises(ConfigError, match="is not a restart policy"):
        RestartPolicy.parse(text)
