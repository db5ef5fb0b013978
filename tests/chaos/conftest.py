"""The fault suite: a whole deployment per test, a fault injected mid-stream, and an account of
every event afterwards (what the logic predicts against what the stream, the store and the DLQ
hold). Each test adds a row to a table printed at the end of the run and written to
test-artifacts/chaos.md (tests/conftest.py calls the hooks here: a parallel run's controller never loads
this file).

    .venv/bin/python -m pytest -m chaos
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from tests.integration.conftest import make_stack  # noqa: F401 - the deployment fixture

ROOT = Path(__file__).resolve().parents[2]


class Figures(msgspec.Struct, frozen=True, kw_only=True):
    """One fault's outcome: events predicted, lost, fills made twice, dead letters, recovery time."""

    fault: str
    events: int
    lost: int
    duplicate_fills: int
    dead_lettered: int
    recovery_s: float
    note: str = ""


RESULTS: list[Figures] = []


class Compound(msgspec.Struct, frozen=True):
    """One run of the compound-fault test: its seed (kill plan and bars), bars per symbol, kills."""

    seed: int
    bars: int
    kills: int
    label: str


def compound_runs(markexpr: str) -> list[Compound]:
    """The compound-fault runs: one short one in the whole suite (CI); ten seeds of the issue's size
    (5 symbols x 800 bars at 200 bars/s, 12 kills) under `pytest -m chaos`; TRADEFLOW_CHAOS_SEEDS=N
    sets the number of seeds either way."""
    long = "chaos" in markexpr
    seeds = int(os.environ.get("TRADEFLOW_CHAOS_SEEDS") or (10 if long else 1))
    bars, kills = (800, 12) if long else (300, 8)
    return [Compound(seed, bars, kills, f"seed {seed}") for seed in range(1, seeds + 1)]


def pytest_generate_tests(metafunc) -> None:
    if "compound" in metafunc.fixturenames:
        runs = compound_runs(metafunc.config.option.markexpr or "")
        metafunc.parametrize("compound", runs, ids=[r.label.replace(" ", "") for r in runs])


def table(rows: list[Figures]) -> str:
    lines = ["| fault | events | lost | duplicate fills | dead-lettered | recovery (s) | |",
             "|---|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {r.fault} | {r.events:,} | {r.lost} | {r.duplicate_fills} | {r.dead_lettered} | "
              f"{r.recovery_s:.1f} | {r.note} |" for r in rows]
    return "\n".join(lines)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "tests/chaos/" in str(item.fspath):
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.integration)


def hand_over(config) -> None:
    """On a worker of a parallel run (pytest-xdist): hand this worker's rows to the controller."""
    output = getattr(config, "workeroutput", None)
    if output is not None:
        output["chaos_rows"] = [msgspec.to_builtins(row) for row in RESULTS]


def take_over(node) -> None:
    """On the controller of a parallel run: the rows of a worker that finished."""
    RESULTS.extend(msgspec.convert(row, Figures) for row in getattr(node, "workeroutput", {}).get("chaos_rows", []))


def summary(terminalreporter) -> None:
    """The table of every fault run, at the end of the run (a parallel run's controller has them all)."""
    if not RESULTS or hasattr(terminalreporter.config, "workerinput"):
        return
    text = table(RESULTS)
    terminalreporter.write_sep("-", "fault tests")
    terminalreporter.write_line(text)
    out = ROOT / "test-artifacts" / "chaos.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
