"""`tradeflow events | trace | store` over a store on disk (no servers): what they print, and one-line
errors for bad input that leave the store as it was."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from datetime import timedelta

import pytest
from click.testing import CliRunner

from replay.store import SCHEMA_VERSION, SqliteEventStore
from services.cli import cli
from tests.unit.test_store import T0, event


def journey(n: int) -> list:
    """One bar's events, each caused by the one before and published 5 ms later."""
    subjects = ["data_ready.GOOG", "signals_ready.GOOG", "validated_ready.GOOG", "approved_ready.GOOG",
                "executed_ready.GOOG"]
    out = []
    for i, subject in enumerate(subjects):
        e = event(100 * n + i, subject, time=T0 + timedelta(days=n, milliseconds=5 * i),
                  event_ts=T0 + timedelta(days=n), trace=f"trace-{n}", cause=out[-1].id if out else None,
                  seq=100 * n + i)
        out.append(e)
    return out


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "events.sqlite"

    async def fill() -> None:
        async with SqliteEventStore.open(path) as store:
            await store.append([e for n in range(1, 11) for e in journey(n)])

    asyncio.run(fill())
    return path


def run(*args: str, store=None, input: str | None = None):
    result = CliRunner().invoke(cli, [*args, *(["--store", str(store)] if store else [])], input=input)
    return result


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_events_filters_by_window_subject_and_symbol(store_path):
    before = digest(store_path)
    result = run("events", "--since", "2024-01-04", "--until", "2024-01-06", "--subject", "signals_ready.*",
                 "--json", store=store_path)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["id"] for line in lines] == ["evt-201", "evt-301"]   # bars of 2024-01-04 and -05 (14:30)
    assert lines[0]["body"]["symbol"] == "GOOG" and lines[0]["event_ts"].startswith("2024-01-04T14:30")
    assert run("events", "--count", "--symbol", "goog", store=store_path).output.strip() == "50"
    table = run("events", "--subject", "executed_ready.>", "--last", "--limit", "2", store=store_path).output
    assert table.splitlines()[1].split()[2] == "evt-1004" and len(table.splitlines()) == 3
    assert digest(store_path) == before


def test_trace_shows_each_stage_and_its_time(store_path):
    result = run("trace", "evt-302", store=store_path)   # any event of the journey finds the whole trace
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines()[2:]]
    assert [r[0] for r in rows] == ["data_ready", "signals_ready", "validated_ready", "approved_ready",
                                    "executed_ready"]
    assert [r[1] for r in rows[1:]] == ["5.0"] * 4 and rows[-1][2] == "20.0"
    as_json = [json.loads(line) for line in run("trace", "trace-3", "--json", store=store_path).output.splitlines()]
    assert [s["after_cause_ms"] for s in as_json] == [None, 5.0, 5.0, 5.0, 5.0]


def test_store_stats_export_and_compact(store_path, tmp_path):
    stats = json.loads(run("store", "stats", "--json", store=store_path).output)
    assert stats["count"] == 50 and stats["stages"]["executed_ready"] == 10
    out = tmp_path / "fills.jsonl"
    result = run("store", "export", "--subject", "executed_ready.>", "-o", str(out), store=store_path)
    assert result.exit_code == 0 and "exported 10 events" in result.output
    assert len(out.read_text().splitlines()) == 10
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = tmp_path / "all.parquet"
    assert run("store", "export", "--format", "parquet", "-o", str(parquet), store=store_path).exit_code == 0
    assert pq.read_table(parquet).num_rows == 50

    refused = run("store", "compact", "--before", "2024-01-06", store=store_path, input="n\n")
    assert refused.exit_code == 1 and run("events", "--count", store=store_path).output.strip() == "50"
    done = run("store", "compact", "--before", "2024-01-06", "--yes", store=store_path)
    assert done.exit_code == 0 and "deleted 15 events" in done.output and "35 left" in done.output  # 3 bars
    nothing = run("store", "compact", "--before", "2024-01-06", "--yes", store=store_path)
    assert nothing.exit_code == 1 and "nothing to compact" in nothing.output


@pytest.mark.parametrize("args, message", [
    (("events", "--since", "yesterday"), "is not a time"),
    (("events", "--since", "2024-01-05", "--until", "2024-01-02"), "is not before"),
    (("events", "--since", "2030-01-01"), "no events match since=2030-01-01"),
    (("events", "--subject", "fills.>"), "unknown subject pattern"),
    (("events", "--subject", "data_ready.>.GOOG"), "'>' may only be the last token"),
    (("events", "--subject", "data ready"), "empty token or white space"),
    (("events", "--symbol", "'; DROP TABLE events; --"), "no events match"),
    (("events", "--limit", "0"), "0 is not in the range"),
    (("events", "--trace", "x" * 100_000), "no events match"),
    (("trace", "nope"), "no event or trace 'nope'"),
    (("store", "export", "--format", "parquet", "-o", "-"), "Parquet needs a file"),
    (("store", "export", "--format", "xml", "-o", "x"), "'xml' is not one of"),
    (("store", "compact", "--before", "soon"), "is not a time"),
])
def test_bad_input_is_a_one_line_error_and_the_store_is_untouched(store_path, args, message):
    before = digest(store_path)
    result = run(*args, store=store_path)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert len(result.output.strip().splitlines()[-1]) < 400
    assert digest(store_path) == before


def test_a_missing_foreign_corrupt_or_newer_store_is_a_clear_error(tmp_path, store_path):
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"SQLite format 3\x00" + bytes(4000))
    with sqlite3.connect(store_path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for path, message in [(tmp_path / "none.sqlite", "no event store at"), (foreign, "not a tradeflow event store"),
                          (corrupt, "corrupt.sqlite"), (store_path, "newer than this code's"),
                          (tmp_path, "is a directory")]:
        before = digest(path) if path.is_file() else None
        for args in (("events",), ("store", "stats"), ("trace", "x"), ("store", "compact", "--before", "2030-01-01")):
            result = run(*args, store=path)
            assert result.exit_code in (1, 2) and message in result.output, (args, path, result.output)
        assert (digest(path) if path.is_file() else None) == before


def test_times_without_a_zone_are_utc(store_path):
    utc = run("events", "--since", "2024-01-03T14:30:00", "--until", "2024-01-03T14:30:01", "--count",
              store=store_path)
    east = run("events", "--since", "2024-01-03T19:30:00+05:00", "--until", "2024-01-03T19:30:01+05:00", "--count",
               store=store_path)
    assert utc.output.strip() == east.output.strip() == "5"


def test_trace_ends_with_the_audit_log_line_of_its_fill(store_path, tmp_path):
    log = tmp_path / "audit.jsonl"
    fill_time = T0 + timedelta(days=3, milliseconds=20)   # journey 3's fill, evt-304
    log.write_text(json.dumps({"type": "fill", "id": "evt-304", "trace_id": "trace-3",
                               "logged_at": (fill_time + timedelta(milliseconds=7)).isoformat()}) + "\n"
                   + json.dumps({"type": "fill", "id": "evt-204", "trace_id": "trace-2",
                                 "logged_at": fill_time.isoformat()}) + "\n")
    steps = [json.loads(line) for line in
             run("trace", "trace-3", "--json", "--audit-log", str(log), store=store_path).output.splitlines()]
    assert [s["stage"] for s in steps][-2:] == ["executed_ready", "audit"]
    assert steps[-1]["after_cause_ms"] == 7.0 and steps[-1]["since_start_ms"] == 27.0
    log.write_bytes(b"\x00not json\n")   # an unreadable log leaves the trace as the store has it
    result = run("trace", "trace-3", "--audit-log", str(log), store=store_path)
    assert result.exit_code == 0 and "audit" not in result.output.split("fields")[1]


def test_trace_reads_an_audit_trail_in_postgresql(store_path, pg_url):
    from services.audit.trail import open_trail

    logged = T0 + timedelta(days=3, milliseconds=20 + 7)   # 7 ms after journey 3's fill, evt-304

    async def log_fill() -> None:
        async with open_trail(pg_url) as trail:
            await trail.append([{"type": "fill", "id": "evt-304", "trace_id": "trace-3",
                                 "logged_at": logged.isoformat()}])

    asyncio.run(log_fill())
    steps = [json.loads(line) for line in
             run("trace", "trace-3", "--json", "--audit-log", pg_url, store=store_path).output.splitlines()]
    assert (steps[-1]["stage"], steps[-1]["after_cause_ms"]) == ("audit", 7.0)
