"""The benchmark suite, small: all three systems run end to end, the table and the JSON come out (so
it cannot rot); bad options and a run that cannot finish end with one line and leave nothing behind."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.serial]   # whole benchmark runs, with a time limit

ROOT = Path(__file__).resolve().parents[2]
SUITE = [sys.executable, str(ROOT / "bench" / "suite.py")]
ROW = re.compile(r"^\| (raw|faststream|tradeflow) \| ([\d,]+) \(", re.MULTILINE)


def bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SUITE, *args], capture_output=True, text=True, timeout=timeout)


def leftovers() -> list[str]:
    """Processes still running from a bench deployment (their command lines name its folders)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "tradeflow-bench-" in cmdline:
            found.append(cmdline)
    return found


def test_the_suite_runs_all_three_systems_and_writes_the_table_and_json(tmp_path):
    run = bench("--bars", "300", "--symbols", "2", "--reps", "1", "--latency-bars", "240", "--rate", "400",
                "--scale-symbols", "2", "--results", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {m.group(1): int(m.group(2).replace(",", "")) for m in ROW.finditer(run.stdout)}
    assert set(rows) == {"raw", "faststream", "tradeflow"}, run.stdout
    assert all(eps > 0 for eps in rows.values())
    assert "| tradeflow/raw |" in run.stdout and "| tradeflow/faststream |" in run.stdout
    [path] = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    events = {name: s["runs"][0]["events"] for name, s in result["systems"].items()}
    assert max(events.values()) - min(events.values()) <= 5, f"the systems carry the same events: {events}"
    for name, figures in result["systems"].items():
        for key in ("throughput_eps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "rss_mb", "cpu_s_per_1k"):
            low, mid, high = (figures[key][k] for k in ("min", "median", "max"))
            assert 0 < low <= mid <= high, (name, key, figures[key])
    assert set(result["ratios"]) == {"tradeflow/raw", "tradeflow/faststream"}
    assert result["scaling"]["2"]["throughput_eps"]["median"] > 0
    assert result["systems"]["tradeflow"]["store_read_eps"]["median"] > 0
    assert not leftovers()


@pytest.mark.parametrize("args, message", [
    (["--bars", "0"], "--bars: must be at least 1, got 0"),
    (["--systems", "raw,kafka"], "unknown kafka; choose from raw, faststream, tradeflow"),
    (["--rate", "fast"], "--rate: not a number: 'fast'"),
    (["--nats-port", "70000"], "--nats-port: 70000 is not a port"),
])
def test_bad_options_are_one_line(args, message):
    run = bench(*args, timeout=60)
    assert run.returncode == 2
    [line] = run.stderr.strip().splitlines()
    assert line.startswith("bench/run: error: ") and message in line


def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = bench("--nats-port", str(port), timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip() == f"bench/run: error: --nats-port: port {port} is in use"


@pytest.mark.parametrize("limit", ["3", "15"])   # while the deployment starts; while bars flow
def test_a_run_past_its_time_limit_stops_with_one_line_and_kills_what_it_started(tmp_path, limit):
    run = bench("--systems", "tradeflow", "--bars", "100000", "--reps", "1", "--no-scaling", "--time-limit", limit,
                "--results", str(tmp_path), timeout=180)
    assert run.returncode == 1
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bench/run: stopped at the time limit ({limit}s, --time-limit)"), run.stderr[-2000:]
    assert not list(tmp_path.glob("*.json"))
    assert not leftovers()


def test_the_runtime_bench_runs_small_and_prints_its_figures():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "runtime_bench.py"), "--features", "20", "--size", "500",
                          "--gets", "640", "--rounds", "3", "--latency", "0.02", "--bars", "600"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "through the pool" in run.stdout and "event-loop lag meanwhile" in run.stdout
    assert re.search(r"near cache \(LOCAL_TTL=0\.5\)\s+[\d,]+ gets/s", run.stdout), run.stdout
    assert re.search(r"every symbol at once\s+[\d.]+ ms a poll\s+[\d.]+x", run.stdout), run.stdout
    assert re.search(r"features in the pool\s+[\d,]+ bars/s\s+loop lag p95", run.stdout), run.stdout
    for args, message in ((["--features", "0"], "must be at least 1"), (["--symbols", "0"], "must be at least 1"),
                          (["--latency", "-1"], "--latency must be"), (["--latency", "nan"], "--latency must be"),
                          (["--rounds", "x"], "invalid int value"),
                          (["--bars", "4"], "--bars at least 5")):
        bad = subprocess.run([sys.executable, str(ROOT / "bench" / "runtime_bench.py"), *args],
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
