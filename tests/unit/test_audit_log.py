"""The audit trail: a line per fill and per closed trade, never twice, durable before the ack.

One behaviour suite, run against every adapter (the `location` fixture): the JSON-lines file (a
real file, the default), a SQLite table and a PostgreSQL table (a real server, tests/servers.py).
What only the file has (its exact bytes, a torn last line, a foreign file) is tested on the file
alone, in the section that says so; a schema version only on the databases.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from datetime import datetime, timedelta, timezone

import orjson
import psycopg
import pytest

from contracts.codec import Incoming
from contracts.envelope import Envelope
from contracts.errors import ConfigError, TradeflowError
from contracts.events import OrderFilled
from services.audit import trail
from services.audit.service import AuditAgent, AuditSettings, build
from services.audit.trail import locate, open_trail
from services.ops.supervisor import free_port
from services.runtime.agent import AgentContext

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
SETTING = "TRADEFLOW_AUDIT_LOG"


@pytest.fixture(params=["jsonl", "sqlite", "postgresql"])
def location(request, tmp_path) -> str:
    """TRADEFLOW_AUDIT_LOG for each adapter: a path, sqlite:///path, or a new database's URL."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite'}"
    return str(tmp_path / "audit.jsonl")


@pytest.fixture
async def open_agent(location, tmp_path):
    """Factory: an audit agent on the trail at `location`, opened (closed after the test)."""
    agents: list[AuditAgent] = []

    async def start(log: str | None = location) -> AuditAgent:
        agent = AuditAgent(AuditSettings(cash=10_000, log=log))
        await agent.open(AgentContext(cache=None, data_dir=tmp_path, metrics=None))
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        await agent.close()


def fill_in(n: int, side: str, quantity: float, price: float) -> Incoming:
    fill = OrderFilled(symbol="GOOG", ts=TS + timedelta(days=n), order_id=f"o-{n}", side=side, quantity=quantity,
                       price=price, commission=1.0)
    env = Envelope(id=f"fill-{n}", type="tradeflow.order.filled", source="execution", time=fill.ts,
                   subject="executed_ready.GOOG", trace_id=f"{n:032x}", causation_id=f"order-{n}")
    return Incoming(env, fill)


def line(line_id: str, **more) -> dict:
    return {"id": line_id, "type": "fill", **more}


async def ids(location: str) -> list[str]:
    return [entry["id"] for entry in await trail.read(location)]


# --- every adapter ------------------------------------------------------------------------------------


async def test_fills_and_closed_trades_are_logged_with_their_event_ids(open_agent, location):
    agent = await open_agent()
    for inc in (fill_in(1, "buy", 10, 100.0), fill_in(2, "sell", 20, 110.0), fill_in(3, "buy", 10, 105.0)):
        agent.handle(inc, TS)
    await agent.record()
    lines = await trail.read(location)
    assert [(entry["type"], entry["id"]) for entry in lines] == [
        ("fill", "fill-1"), ("fill", "fill-2"), ("trade", "fill-2:trade:0"), ("fill", "fill-3"),
        ("trade", "fill-3:trade:0")]
    assert (lines[0]["trace_id"], lines[0]["causation_id"], lines[0]["order_id"]) == ("1".zfill(32), "order-1", "o-1")
    # long 10 from 100 closed at 110: 100 less a commission of 1 in and 0.5 (half the reversal) out
    assert (lines[2]["size"], lines[2]["entry_price"], lines[2]["exit_price"], lines[2]["pnl"]) == (
        10.0, 100.0, 110.0, 98.5)
    assert (lines[4]["size"], lines[4]["pnl"]) == (-10.0, 50 - 0.5 - 1.0)   # short 10 from 110 closed at 105


async def test_a_redelivered_fill_or_a_restart_adds_no_line(open_agent, location):
    agent = await open_agent()
    agent.handle(fill_in(1, "buy", 10, 100.0), TS)
    agent.handle(fill_in(2, "sell", 10, 110.0), TS)
    await agent.record()
    restarted = await open_agent()   # rebuilt from history: the same fills again, and one new
    for inc in (fill_in(1, "buy", 10, 100.0), fill_in(2, "sell", 10, 110.0), fill_in(3, "buy", 5, 90.0)):
        restarted.handle(inc, TS)
    await restarted.record()
    assert await ids(location) == ["fill-1", "fill-2", "fill-2:trade:0", "fill-3"]


async def test_a_batch_rolled_back_before_it_was_recorded_leaves_no_line(open_agent, location):
    agent = await open_agent()
    agent.handle(fill_in(1, "buy", 10, 100.0), TS)
    snapshot = agent.snapshot()
    agent.handle(fill_in(2, "sell", 10, 110.0), TS)
    agent.restore(snapshot)                   # the batch failed: it will be redelivered
    await agent.record()
    assert await ids(location) == ["fill-1"]
    agent.handle(fill_in(2, "sell", 10, 110.0), TS)   # the redelivery closes the trade once
    await agent.record()
    assert (await ids(location))[1:] == ["fill-2", "fill-2:trade:0"]


async def test_an_id_is_written_once_within_a_batch_across_batches_and_after_reopening(location):
    async with open_trail(location) as log:
        assert await log.append([line("a", n=1), line("b"), line("a", n=2)]) == 2   # the batch's first "a" wins
        assert await log.append([line("b"), line("c")]) == 1
        assert await log.count() == 3
    async with open_trail(location) as log:
        assert await log.count() == 3
        assert await log.append([line("c"), line("a", n=3), line("d")]) == 1
    assert await trail.read(location) == [line("a", n=1), line("b"), line("c"), line("d")]


async def test_lines_come_back_exactly_as_written_in_the_order_written(location):
    written = [line("z", price=101.25, note="Zürich ✓", tags=["x", "y"], nested={"b": 1, "a": None}),
               line("m", flag=True, quantity=-3), line("a:trade:0", pnl=0.1 + 0.2)]
    async with open_trail(location) as log:
        await log.append(written[:2])
        await log.append(written[2:])
    read = await trail.read(location)
    assert read == written
    assert [list(entry) for entry in read] == [list(entry) for entry in written]   # key order kept, as in the file
    assert list(read[0]["nested"]) == ["b", "a"]


async def test_two_trails_on_one_store_written_at_once_keep_each_line_once(location):
    rng = random.Random(21)
    batches = [[line(f"l{rng.randrange(80)}", writer=w) for _ in range(6)] for w in range(30)]
    async with open_trail(location) as one, open_trail(location) as two:
        async def write(log, order) -> int:
            return sum([await log.append(batches[i]) for i in order])

        new = await asyncio.gather(write(one, range(30)), write(two, reversed(range(30))))
        expected = {entry["id"] for batch in batches for entry in batch}
        assert sum(new) == len(expected)   # each line counted new once, by whichever trail wrote it
        assert await one.count() == await two.count() == len(expected)
    held = await ids(location)
    assert sorted(held) == sorted(expected)


async def test_a_reader_creates_nothing_and_cannot_write(location, tmp_path):
    with pytest.raises(ConfigError, match=SETTING):
        await open_trail(location, read_only=True)
    assert list(tmp_path.iterdir()) == []   # no file made (a database: the next test)
    async with open_trail(location) as log:
        await log.append([line("a")])
    async with open_trail(location, read_only=True) as reader:
        assert await reader.read() == [line("a")]
        with pytest.raises(TradeflowError, match="read-only"):
            await reader.append([line("b")])
    assert await ids(location) == ["a"]


async def test_a_database_reader_finds_no_schema_made(pg_url):
    with pytest.raises(ConfigError, match=f"{SETTING}: no audit trail in "):
        await open_trail(pg_url, read_only=True)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


@pytest.fixture(params=["jsonl", "sqlite", "postgresql"])
def unusable(request, tmp_path) -> str:
    """A location each adapter cannot open: a folder that is a file, a server that is not there."""
    (tmp_path / "taken").write_text("a file where the folder should be")
    return {"jsonl": str(tmp_path / "taken" / "audit.jsonl"),
            "sqlite": f"sqlite:///{tmp_path / 'taken' / 'audit.sqlite'}",
            "postgresql": f"postgresql://audit:s3cret@127.0.0.1:{free_port()}/audit"}[request.param]


async def test_an_unusable_trail_is_a_one_line_error_naming_the_setting(unusable):
    with pytest.raises(ConfigError) as caught:
        await open_trail(unusable, timeout=1)
    message = str(caught.value)
    assert message.startswith(f"{SETTING}: ") and "\n" not in message
    assert "s3cret" not in message


@pytest.mark.parametrize("value", ["postgresql://audit:s3cret@[db/audit", "postgresql://audit:s3cret@db/audit?bogus=1",
                                   "postgresql://audit:s3cret@db/", "sqlite:///", "mysql://audit:s3cret@db/audit"],
                         ids=["bad-host", "bad-parameter", "no-database", "sqlite-no-path", "unknown-scheme"])
def test_a_malformed_setting_stops_audit_before_it_connects(value):
    with pytest.raises(ConfigError) as caught:
        build({SETTING: value})
    message = str(caught.value)
    assert SETTING in message and "\n" not in message and "s3cret" not in message


@pytest.mark.parametrize(("value", "kind"), [
    ("var/audit/audit.jsonl", "jsonl"), ("var/audit/audit.sqlite", "jsonl"), ("sqlite:///var/audit.sqlite", "sqlite"),
    (" SQLITE:////var/audit.sqlite", "sqlite"), ("postgresql://db/audit", "postgresql"),
    ("postgres://db/audit", "postgresql")])
def test_a_path_is_the_json_lines_file_and_a_url_a_table(value, kind):
    assert locate(value)[0] == kind


# --- the databases only: a schema version ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'audit.sqlite'}"


def _sql(location: str, statement: str) -> list[tuple]:
    """Run one statement on the trail's database directly; its rows."""
    if location.startswith("sqlite:///"):
        with sqlite3.connect(location.removeprefix("sqlite:///")) as conn:
            return conn.execute(statement).fetchall()
    with psycopg.connect(location) as conn:
        cursor = conn.execute(statement)
        return cursor.fetchall() if cursor.description else []


async def test_a_newer_schema_is_refused_and_nothing_is_written(database):
    async with open_trail(database) as log:
        await log.append([line("a")])
    _sql(database, "UPDATE tradeflow_schema SET version = 99 WHERE component = 'audit'")
    for read_only in (False, True):
        with pytest.raises(ConfigError) as caught:
            await open_trail(database, read_only=read_only)
        assert str(caught.value) == (f"{SETTING}: the database's audit schema is version 99, newer than this "
                                     "code's 1: use a newer tradeflow")
    assert _sql(database, "SELECT id FROM audit_trail") == [("a",)]


# --- the JSON-lines file only: its bytes, a torn line, a foreign file --------------------------------------


async def test_by_default_the_trail_is_the_json_lines_file_users_grep(open_agent, tmp_path):
    agent = await open_agent(log=None)
    agent.handle(fill_in(1, "buy", 10, 100.0), TS)
    await agent.record()
    assert agent.lines == []
    lines = await trail.read(tmp_path / "audit.jsonl")
    assert (tmp_path / "audit.jsonl").read_bytes() == b"".join(orjson.dumps(entry) + b"\n" for entry in lines)
    assert [entry["id"] for entry in lines] == ["fill-1"]


async def test_a_line_torn_by_a_crash_is_cut_and_written_again(tmp_path):
    path = tmp_path / "audit.jsonl"
    async with open_trail(path) as log:
        await log.append([{"id": "a", "type": "fill"}])
    with path.open("ab") as fh:
        fh.write(b'{"id": "b", "ty')           # the process died mid-write
    async with open_trail(path) as log:
        assert await log.append([{"id": "a"}, {"id": "b", "type": "fill"}]) == 1
    assert await ids(str(path)) == ["a", "b"]


async def test_a_line_torn_by_a_writer_that_died_is_cut_by_the_one_still_writing(tmp_path):
    path = tmp_path / "audit.jsonl"
    async with open_trail(path) as log:
        await log.append([line("a")])
        with path.open("ab") as fh:
            fh.write(b'{"id": "b", "ty')           # a second writer died mid-write
        assert await log.append([line("b"), line("c")]) == 2
    assert path.read_bytes() == b"".join(orjson.dumps(line(i)) + b"\n" for i in "abc")


@pytest.mark.parametrize("content", [b"not json\n", b'["a list"]\n', b'{"no": "id"}\n', b"\xff\xfe\n"],
                         ids=["not-json", "not-an-object", "no-id", "binary"])
async def test_a_foreign_file_is_refused_and_left_untouched(tmp_path, content):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(orjson.dumps({"id": "a"}) + b"\n" + content)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=rf"{SETTING}: audit log .*line 2 is not an audit record"):
        await open_trail(path)
    assert path.read_bytes() == before
