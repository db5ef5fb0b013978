"""What a supervisor starts dies with it, however it dies: a supervisor killed with -9 leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil

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
