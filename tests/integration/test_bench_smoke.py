"""The throughput bench, small: both systems run end to end and the table comes out (so it cannot rot)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(raw|tradeflow)\s+([\d,]+)\s+[\d.]+\s+[\d,]+$", re.MULTILINE)


def test_the_pipeline_bench_runs_both_systems_and_prints_the_ratio():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "pipeline_bench.py"), "--symbols", "2",
                          "--bars-per-symbol", "150"], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {m.group(1): int(m.group(2).replace(",", "")) for m in ROW.finditer(run.stdout)}
    assert set(rows) == {"raw", "tradeflow"}, run.stdout
    assert abs(rows["raw"] - rows["tradeflow"]) <= 5, "both systems carry (nearly) the same events"
    assert "tradeflow / raw throughput:" in run.stdout
