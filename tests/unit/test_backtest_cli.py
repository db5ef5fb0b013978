"""`tradeflow backtest`: runs with no servers, prints the documented JSON, refuses bad options in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def tradeflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, timeout=120)


def test_backtest_json_has_the_trades_and_final_equity_of_the_classic_example(tmp_path):
    out = tradeflow("backtest", "--data", "GOOG", "--strategy", "sma_cross", "--param", "fast=10", "--param",
                    "slow=20", "--cash", "10000", "--commission", "0.002", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert round(report["final_equity"], 2) == 56_263.52
    assert len(report["trades"]) == 93
    first = report["trades"][0]
    assert {"entry_time", "exit_time", "entry_price", "exit_price", "size", "pnl"} <= set(first)
    assert (first["size"], first["entry_price"], first["exit_price"]) == (-59, 169.02, 179.13)


def test_backtest_reads_a_plain_csv_file(tmp_path):
    path = tmp_path / "ABC.csv"
    rows = ["Date,Open,High,Low,Close,Volume"] + [
        f"2024-01-{d:02d},{p},{p + 1},{p - 1},{p},100"
        for d, p in enumerate([10, 11, 12, 11, 10, 9, 10, 12, 13, 12], 1)]
    path.write_text("\n".join(rows) + "\n")
    out = tradeflow("backtest", "--data", str(path), "--param", "fast=2", "--param", "slow=3", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bars"] == 10


@pytest.mark.parametrize("args, message", [
    pytest.param(["--strategy", "nope"], "unknown strategy 'nope'", id="unknown-strategy"),
    pytest.param(["--param", "fast"], "expected NAME=VALUE", id="param-without-value"),
    pytest.param(["--param", "speed=3"], "NAME one of fast, max_gap_seconds, periods_per_year, slow, vol_window",
                 id="unknown-param"),
    pytest.param(["--param", "fast=ten"], "TRADEFLOW_STRATEGY_FAST", id="param-not-a-number"),
    pytest.param(["--param", "fast=30"], "fast (30) must be shorter than slow (20)", id="invalid-combination"),
    pytest.param(["--cash", "-5"], "--cash", id="negative-cash"),
    pytest.param(["--commission", "0.5"], "--commission", id="commission-out-of-range"),
    pytest.param(["--sizing", "some"], "use all_in or fixed:QUANTITY", id="bad-sizing"),
    pytest.param(["--sizing", "fixed:-3"], "TRADEFLOW_RISK_ORDER_QUANTITY", id="negative-fixed-size"),
])
def test_bad_backtest_options_are_one_line_errors(args, message):
    out = tradeflow("backtest", "--data", "GOOG", *args)
    assert out.returncode != 0
    assert message in out.stderr and "Traceback" not in out.stderr


def test_backtest_on_a_file_with_a_bad_row_names_the_line(tmp_path):
    path = tmp_path / "BAD.csv"
    path.write_text("Date,Open,High,Low,Close\n2024-01-01,10,11,9,10\n2024-01-02,10,9,11,10\n")
    out = tradeflow("backtest", "--data", str(path))
    assert out.returncode == 1 and f"{path}:3" in out.stderr and "below low" in out.stderr
