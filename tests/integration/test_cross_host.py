"""A deployment across three hosts on one machine: network namespaces joined by veth links, made and
removed by this test (tests/hosts.py); the run itself is tests/integration/cross_host_scenario.py, on
a fourth namespace (the observer), so nothing runs in the machine's own network."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest

from tests.hosts import network

pytestmark = [pytest.mark.integration, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]


def test_a_deployment_across_three_hosts_survives_a_cut_link_and_a_redis_failover(tmp_path):
    with network(4) as net:
        observer = net.hosts[0]
        env = os.environ | net.to_env() | {"PYTEST_TRADEFLOW_SESSION": uuid.uuid4().hex}   # its own process check
        run = subprocess.run([*observer.prefix, sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                              "--show-capture=no", "--tb=short", "-rf", "--basetemp", str(tmp_path / "run"),
                              str(ROOT / "tests" / "integration" / "cross_host_scenario.py")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    figures = {}
    for line in run.stdout.splitlines():
        if line.startswith("FIGURE "):
            figures |= orjson.loads(line.removeprefix("FIGURE "))
    print(f"\ncross-host figures: {figures}")
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "1 passed" in run.stdout
