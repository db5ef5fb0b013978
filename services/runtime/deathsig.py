"""Processes a service starts die with it, even when it is killed with -9 (Linux: PR_SET_PDEATHSIG).

The supervisor (`tradeflow up`, `deploy local`, a test's stack) has every process it starts sent
SIGTERM when it dies, however it dies (`on_parent_death`): the services drain and exit, the servers
shut down, and nothing outlives a supervisor that was killed with -9.

The compute pool's processes are not the service's children alone: multiprocessing's forkserver is,
and the pool's workers are the forkserver's. A SIGKILL of the service runs none of its clean-up, and
the forkserver and its workers (each waiting on a queue whose write end it holds itself) would live
on as orphans. So the forkserver asks the kernel to kill it when the service dies (it imports
services.runtime.forkserver_preload first), and each worker when the forkserver dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None   # loaded before any fork


PARENT = "TRADEFLOW_DEATHSIG_PARENT"   # the pid a process of the pool is to die with, set by whoever starts it


def die_with_parent(expected: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies; exit now if the parent already has.

    `expected` (else $TRADEFLOW_DEATHSIG_PARENT, else the parent now) is the pid the process was started by:
    a parent killed while this process was still starting (Python's start-up takes a while) leaves it
    reparented before it could ask, and only the pid it was meant to have tells that apart."""
    if not sys.platform.startswith("linux"):
        return
    parent = expected or int(os.environ.get(PARENT) or 0) or os.getppid()
    assert _libc is not None   # loaded on Linux
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:   # it died before the call took effect
        os._exit(1)


def on_parent_death(sig: int = signal.SIGTERM):
    """A `preexec_fn` for a child process: the kernel sends it `sig` when this process (its parent) dies;
    if this process is already gone by the time the child asks, the child exits at once."""
    if _libc is None:
        return None
    parent = os.getpid()

    def arrange() -> None:   # in the child, between fork and exec: no Python-level locks taken here
        _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arrange
