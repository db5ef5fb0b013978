"""A store that cannot be used stops the recorder and every store command at start-up: exit non-zero, one
line naming TRADEFLOW_STORE (or --store), any password hidden, nothing written. And the commands take a
URL as well as a path."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from replay.store import SCHEMA_VERSION, open_store
from services.cli import cli
from tests.stores import KINDS, location_for
from tests.unit.test_store import event

SECRET = "s3cret-pw"
MALFORMED = [
    pytest.param("mysql://x", "unknown scheme 'mysql'", id="unknown-scheme"),
    pytest.param("postgresql://", "names no database", id="postgres-without-database"),
    pytest.param("sqlite://relative", "a SQLite URL is sqlite:///relative/path", id="sqlite-two-slashes"),
]
COMMANDS = [("events",), ("store", "stats"), ("store", "export", "-o", "OUT"),
            ("store", "compact", "--before", "2030-01-01", "--yes"), ("trace", "x"),
            ("replay", "--since", "2024-01-01"), ("whatif",)]
QUIET = {"NATS_URL": "nats://127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1/0", "TRADEFLOW_HTTP_PORT": "0"}


def files(folder: Path) -> dict[str, str]:
    """Every file under `folder`, with a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def tradeflow(*args: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TRADEFLOW_STORE"}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True,
                          env={**environ, **QUIET, "TRADEFLOW_DATA_DIR": str(folder), **env}, timeout=60)


def refused(result, setting: str) -> str:
    """The one line a refused start printed: non-zero exit, the last line, naming `setting`, and no other
    line of its kind (the service's JSON logs aside)."""
    stderr = result.stderr if hasattr(result, "stderr") and isinstance(result.stderr, str) else result.output
    code = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert code not in (0, None), stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and setting in lines[0], stderr
    assert SECRET not in stderr + (result.stdout if hasattr(result, "stdout") else "")
    return lines[0]


def commands_for(folder: Path):
    return [tuple(str(folder / "out.jsonl") if a == "OUT" else a for a in args) for args in COMMANDS]


@pytest.fixture
def newer(tmp_path) -> Path:
    """A store file whose schema is newer than the code's."""
    path = tmp_path / "store" / "events.sqlite"
    path.parent.mkdir()

    async def fill() -> None:
        async with open_store(path) as store:
            await store.append([event(n) for n in range(1, 6)])

    asyncio.run(fill())
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        raw.execute("PRAGMA journal_mode = DELETE")   # no side files left to compare
    return path


@pytest.mark.parametrize("value, message", MALFORMED)
def test_a_malformed_store_setting_stops_every_command_in_one_line(tmp_path, monkeypatch, value, message):
    monkeypatch.setenv("TRADEFLOW_STORE", value)
    for args in commands_for(tmp_path):
        line = refused(CliRunner().invoke(cli, list(args)), "TRADEFLOW_STORE")
        assert message in line, (args, line)
        line = refused(CliRunner().invoke(cli, [*args, "--store", value]), "--store")
        assert message in line and "TRADEFLOW_STORE" not in line, (args, line)
    assert files(tmp_path) == {}


@pytest.mark.parametrize("value, message", MALFORMED)
def test_a_malformed_store_setting_stops_the_recorder_and_a_command_process(tmp_path, value, message):
    recorder = tradeflow("run", "recorder", folder=tmp_path, env={"TRADEFLOW_STORE": value})
    assert message in refused(recorder, "TRADEFLOW_STORE")
    events = tradeflow("events", "--store", value, folder=tmp_path, env={})
    assert message in refused(events, "--store")
    assert files(tmp_path) == {}


def test_a_newer_schema_stops_the_recorder_and_every_command(tmp_path, newer):
    before = files(tmp_path)
    recorder = tradeflow("run", "recorder", folder=tmp_path, env={"TRADEFLOW_STORE": str(newer)})
    assert "newer than this code's" in refused(recorder, "TRADEFLOW_STORE")
    for args in commands_for(tmp_path):
        line = refused(tradeflow(*args, "--store", f"sqlite:///{newer}", folder=tmp_path, env={}), "--store")
        assert "newer than this code's" in line, (args, line)
    assert files(tmp_path) == before, "nothing written, not even the writer's lock file"


def test_an_unreachable_postgres_store_stops_the_recorder_and_the_commands(tmp_path):
    url = f"postgresql://tradeflow:{SECRET}@127.0.0.1:1/events"
    recorder = tradeflow("run", "recorder", folder=tmp_path, env={"TRADEFLOW_STORE": url})
    assert "127.0.0.1:1" in refused(recorder, "TRADEFLOW_STORE")
    events = tradeflow("events", folder=tmp_path, env={"TRADEFLOW_STORE": url})   # each waits the pool's timeout
    assert "127.0.0.1:1" in refused(events, "TRADEFLOW_STORE")
    assert files(tmp_path) == {}


def rows(url: str) -> dict[str, object]:
    """Every table of the database's public schema with its row count, and the schema versions."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [t for t, in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        counts: dict[str, object] = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone() for t in tables}
        return counts | {"versions": conn.execute("SELECT * FROM tradeflow_schema ORDER BY 1").fetchall()}


def test_a_newer_postgres_schema_stops_the_recorder_and_the_commands(tmp_path, pg_url):
    import psycopg

    async def create() -> None:
        async with open_store(pg_url) as store:
            await store.append([event(1)])

    asyncio.run(create())
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE tradeflow_schema SET version = version + 1")
    before = rows(pg_url)
    recorder = tradeflow("run", "recorder", folder=tmp_path, env={"TRADEFLOW_STORE": pg_url})
    assert "newer than this code's" in refused(recorder, "TRADEFLOW_STORE")
    for args in [c for c in commands_for(tmp_path) if c[:2] in (("events",), ("store", "stats"),
                                                                  ("store", "compact"))]:   # reads, and a write
        line = refused(tradeflow(*args, "--store", pg_url, folder=tmp_path, env={}), "--store")
        assert "newer than this code's" in line, (args, line)
    assert rows(pg_url) == before, "nothing written"


@pytest.mark.parametrize("kind", KINDS)
def test_the_commands_take_a_url_as_well_as_a_path(tmp_path, monkeypatch, request, kind):
    location = location_for(kind, request, tmp_path)

    async def fill() -> None:
        async with open_store(location) as store:
            await store.append([event(n) for n in range(1, 8)])

    asyncio.run(fill())
    monkeypatch.chdir(tmp_path)
    spellings = [location] if kind == "postgresql" else [f"sqlite:///{location}", "sqlite:///events.sqlite", location]
    for value in spellings:
        result = CliRunner().invoke(cli, ["store", "stats", "--json", "--store", value])
        assert result.exit_code == 0 and json.loads(result.output)["count"] == 7, (value, result.output)
    monkeypatch.setenv("TRADEFLOW_STORE", spellings[0])
    assert CliRunner().invoke(cli, ["events", "--count"]).output.strip() == "7"
    trace = CliRunner().invoke(cli, ["trace", "evt-3", "--json"])
    assert trace.exit_code == 0 and json.loads(trace.output)["id"] == "evt-3", trace.output
    out = tmp_path / "all.jsonl"
    assert CliRunner().invoke(cli, ["store", "export", "-o", str(out)]).exit_code == 0
    assert len(out.read_text().splitlines()) == 7
    compacted = CliRunner().invoke(cli, ["store", "compact", "--before", "2024-01-05", "--yes"])
    assert compacted.exit_code == 0 and "deleted 2 events" in compacted.output and "5 left" in compacted.output
