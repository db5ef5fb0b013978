"""No silent regressions: the worker's CPU per message stays within GUARD_LIMIT of a raw nats-py hop's.

CPU, not wall time, and a ratio from alternating rounds in one process: the machine's noise moves both
systems alike (bench/guard.py says how). The second test slows the hot path on purpose and expects the
guard to catch it, so the first cannot pass whatever the hot path costs.
"""

from __future__ import annotations

import time

import pytest

import services.runtime.worker as worker_module
from bench.guard import GUARD_LIMIT, PACED_LIMIT, measure

pytestmark = [pytest.mark.integration, pytest.mark.serial]   # a CPU ratio: nothing else running

MESSAGES = 3000
ROUNDS = 5   # the median of five alternating rounds: one slow round on a shared machine does not decide


async def test_the_hot_path_costs_at_most_the_guard_limit_over_raw_nats_py(tmp_path):
    result = await measure(tmp_path, messages=MESSAGES, rounds=ROUNDS)
    assert result.passed, (f"the worker's CPU per message is over its limit ({GUARD_LIMIT}x raw nats-py's draining a "
                           f"backlog, {PACED_LIMIT}x one at a time): {result}; profile it (bench/README.md)")


async def test_the_guard_fails_a_hot_path_slowed_on_purpose(tmp_path, monkeypatch):
    decode = worker_module.decode

    def slow_decode(*args, **kwargs):   # what a costly per-message step added to the hot path would do
        until = time.thread_time() + 150e-6
        while time.thread_time() < until:
            pass
        return decode(*args, **kwargs)

    monkeypatch.setattr(worker_module, "decode", slow_decode)
    result = await measure(tmp_path, messages=MESSAGES, rounds=3)
    assert not result.passed and result.ratio > GUARD_LIMIT, f"a hot path slowed by 150 µs a message passed: {result}"
