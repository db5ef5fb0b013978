"""replay.store: one behaviour suite for the event store's port, run against both adapters (SQLite, the
embedded default; PostgreSQL, the shared one): idempotent appends, exact time windows, NATS subject
patterns, paging, compaction, export, the writer fence, and clear errors on bad stores and bad filters.
What only one adapter has (a file's bytes, a server restart, a database role) is in its own section at the
end; where a shared test looks inside the storage (free space, WAL mode), it does so per adapter."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import sqlite3
import sys
from datetime import datetime, timedelta, timezone

import orjson
import psycopg
import pytest

from contracts.codec import decode
from contracts.envelope import Envelope, headers_for
from replay.store import SqliteEventStore, StoreBusy, StoredEvent, StoreError, StoreUnavailable, open_store
from replay.store.pg import DatabaseError
from replay.store.postgres import TABLE, PostgresEventStore

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
SUBJECTS = ["data_ready.GOOG", "data_ready.A_B", "data_ready.AXB", "data_ready.BRK.B", "signals_ready.GOOG",
            "rejected.risk.GOOG", "rejected.quant.A_B"]
ADAPTERS = ["sqlite", "postgresql"]


def event(n: int, subject: str = "data_ready.GOOG", *, time: datetime | None = None, event_ts: datetime | None = None,
          trace: str | None = None, cause: str | None = None, seq: int | None = None) -> StoredEvent:
    stage, _, rest = subject.partition(".")
    symbol = rest.partition(".")[2] if stage == "rejected" else rest
    event_ts = event_ts or T0 + timedelta(days=n)
    body = orjson.dumps({"symbol": symbol, "ts": event_ts.isoformat(), "n": n})
    return StoredEvent(id=f"evt-{n}", type=f"tradeflow.{stage}.v1", subject=subject, stage=stage, symbol=symbol,
                       source="test", time=time or T0 + timedelta(seconds=n), event_ts=event_ts,
                       trace_id=trace or f"trace-{n}", causation_id=cause, stream_seq=n if seq is None else seq,
                       headers={"ce-id": f"evt-{n}"}, body=body, recorded_at=T0)


@pytest.fixture(scope="module")
def store_database(postgres_server) -> str:
    return postgres_server.database()


@pytest.fixture
def pg_url(store_database) -> str:
    """This module's database, emptied: as new as conftest's, without CREATE DATABASE's half second a test."""
    with psycopg.connect(store_database, autocommit=True) as raw:
        raw.execute("SET lock_timeout = '10s'")   # a session a test left open fails the next loudly
        raw.execute("DROP SCHEMA public CASCADE")
        raw.execute("CREATE SCHEMA public")
    return store_database


@pytest.fixture(params=ADAPTERS)
def where(request, tmp_path) -> str:
    """This test's store: a file in its folder, or a new PostgreSQL database of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "events.db")
    return request.getfixturevalue("pg_url")


def opening(where: str, **options):
    """Open the store at `where` with the adapter its spelling names."""
    adapter = PostgresEventStore if where.startswith("postgresql://") else SqliteEventStore
    return adapter.open(where, **options)


@pytest.fixture
async def store(where):
    async with opening(where, page_size=7) as opened:
        yield opened


async def ids(store, **filters) -> list[str]:
    return [e.id async for e in store.query(**filters)]


async def test_append_is_idempotent_by_id(store):
    batch = [event(n) for n in range(10)]
    assert await store.append(batch) == 10
    assert await store.append(batch) == 0
    assert await store.append([event(9), event(10)]) == 1
    assert await store.count() == 11
    assert await store.append([]) == 0


async def test_an_event_comes_back_exactly(store):
    raw = orjson.dumps({"symbol": "GOOG", "ts": "2024-01-02T14:30:00Z", "open": 100.0, "high": 104.0, "low": 96.0,
                        "close": 101.0, "volume": 1000.0})
    env = Envelope(id="bar-1", type="tradeflow.market_bar.v1", source="data", time=T0 + timedelta(microseconds=7),
                   subject="data_ready.GOOG", trace_id="4bf92f3577b34da6a3ce929d0e0e4736", causation_id="in-1")
    headers = headers_for(env)
    stored = StoredEvent.of(decode("data_ready.GOOG", raw, headers, sequence=42), body=raw, headers=headers,
                            recorded_at=T0)
    await store.append([stored])
    assert await store.get("bar-1") == stored
    assert await store.get("missing") is None
    assert (stored.stage, stored.symbol, stored.event_ts, stored.stream_seq) == ("data_ready", "GOOG", T0, 42)


@pytest.mark.parametrize("by", ["time", "event_ts"])
async def test_time_window_includes_since_and_excludes_until(store, by):
    await store.append([event(n) for n in range(10)])
    step = timedelta(seconds=1) if by == "time" else timedelta(days=1)
    window = dict(since=T0 + 3 * step, until=T0 + 6 * step, by=by)
    assert await ids(store, **window) == ["evt-3", "evt-4", "evt-5"]
    assert await store.count(**window) == 3
    # another time zone names the same instants
    est = timezone(timedelta(hours=-5))
    assert await ids(store, since=(T0 + 3 * step).astimezone(est), until=T0 + 4 * step, by=by) == ["evt-3"]


async def test_naive_datetimes_are_refused(store):
    with pytest.raises(ValueError, match="no time zone"):
        await store.count(since=datetime(2024, 1, 2))


@pytest.mark.parametrize(("pattern", "expected"), [
    pytest.param("data_ready.GOOG", ["data_ready.GOOG"], id="exact"),
    pytest.param("data_ready.*", ["data_ready.GOOG", "data_ready.A_B", "data_ready.AXB"], id="star-one-token"),
    pytest.param("data_ready.>", ["data_ready.GOOG", "data_ready.A_B", "data_ready.AXB", "data_ready.BRK.B"],
                 id="gt-trailing-tokens"),
    pytest.param("data_ready.A_B", ["data_ready.A_B"], id="underscore-is-literal"),
    pytest.param("*.A_B", ["data_ready.A_B"], id="underscore-literal-after-star"),
    pytest.param("data_ready.BRK.B", ["data_ready.BRK.B"], id="dotted-symbol"),
    pytest.param("data_ready.BRK", [], id="no-prefix-match"),
    pytest.param("rejected.>", ["rejected.risk.GOOG", "rejected.quant.A_B"], id="all-rejections"),
    pytest.param("rejected.*.GOOG", ["rejected.risk.GOOG"], id="star-in-middle"),
    pytest.param("*.*.GOOG", ["rejected.risk.GOOG"], id="three-tokens"),
    pytest.param("*.risk.>", ["rejected.risk.GOOG"], id="star-literal-gt"),
    pytest.param("*.GOOG", ["data_ready.GOOG", "signals_ready.GOOG"], id="star-first"),
    pytest.param("*.>", SUBJECTS, id="star-gt"),
    pytest.param(">", SUBJECTS, id="gt-alone"),
    pytest.param("data_ready.goog", [], id="case-sensitive"),
    pytest.param("data_ready.%", [], id="percent-is-literal"),
    pytest.param("*.%", [], id="percent-is-literal-after-star"),
    pytest.param("*.GOO?", [], id="question-mark-is-literal"),
    pytest.param("*.[G]OOG", [], id="bracket-is-literal"),
])
async def test_subject_patterns_match_as_nats_does(store, pattern, expected):
    await store.append([event(n, subject) for n, subject in enumerate(SUBJECTS)])
    found = [e.subject async for e in store.query(subjects=[pattern])]
    assert sorted(found) == sorted(expected)


async def test_several_patterns_match_any(store):
    await store.append([event(n, subject) for n, subject in enumerate(SUBJECTS)])
    assert await store.count(subjects=["signals_ready.*", "rejected.risk.>"]) == 2
    assert await store.count(subjects="data_ready.GOOG") == 1  # a lone string is one pattern


@pytest.mark.parametrize("pattern", ["", "data_ready.", ".GOOG", "data_ready..GOOG", "rejected.>.GOOG",
                                     "data_ready.GO*", "data_ready.>x", "data_ready.GO OG", "data_ready.\t"])
async def test_a_malformed_pattern_is_a_value_error(store, pattern):
    with pytest.raises(ValueError, match="bad subject pattern"):
        store.query(subjects=[pattern])


@pytest.mark.parametrize("hostile", ["x'; DROP TABLE events;--", "%", "_", "' OR 1=1 --", '"', "\\"])
async def test_hostile_filter_values_are_just_data(store, hostile):
    await store.append([event(n) for n in range(3)])
    assert await store.count(symbol=hostile) == 0
    assert await store.count(trace_id=hostile) == 0
    assert await store.count(subjects=[f"data_ready.{hostile}".replace(" ", "")]) == 0
    assert await store.count() == 3


REGEX_SYMBOLS = ["A+B", "A$", "(A)", "A|B", "A{2}", "[A]", "^A", "A\\B", "A?", "A-B", "A#B", "A<B"]


async def test_regex_and_glob_characters_in_a_subject_are_plain(store):
    # each would match one of the decoys (or nothing) if it were read as a regular expression or a glob
    decoys = ["AB", "AAB", "A", "AA", "B", "AAA", "A\\\\B", "a$"]
    await store.append([event(n, f"data_ready.{symbol}") for n, symbol in enumerate(REGEX_SYMBOLS + decoys)])
    for symbol in REGEX_SYMBOLS:
        for pattern in (f"*.{symbol}", f"data_ready.{symbol}", f"data_ready.{symbol}.>"):
            found = [e.subject async for e in store.query(subjects=[pattern])]
            assert found == ([] if pattern.endswith(">") else [f"data_ready.{symbol}"]), pattern


async def test_symbol_trace_and_causation_filters(store):
    await store.append([
        event(1, "data_ready.GOOG", trace="t1"),
        event(2, "signals_ready.GOOG", trace="t1", cause="evt-1"),
        event(3, "data_ready.A_B", trace="t2"),
        event(4, "rejected.risk.GOOG", trace="t1", cause="evt-2"),
    ])
    assert await ids(store, symbol="GOOG") == ["evt-1", "evt-2", "evt-4"]
    assert await ids(store, symbol="AXB") == []
    assert [e.id for e in await store.trace("t1")] == ["evt-1", "evt-2", "evt-4"]
    assert await ids(store, causation_id="evt-2") == ["evt-4"]
    assert await ids(store, symbol="GOOG", subjects=["rejected.>"]) == ["evt-4"]


async def test_order_is_time_then_stream_seq_then_id(store):
    same = T0 + timedelta(hours=1)
    await store.append([event(5, time=same, seq=2), event(4, time=same, seq=1), event(3, time=T0, seq=9),
                        event(6, time=same, seq=2)])
    assert await ids(store) == ["evt-3", "evt-4", "evt-5", "evt-6"]
    assert await ids(store, order="desc") == ["evt-6", "evt-5", "evt-4", "evt-3"]
    with pytest.raises(ValueError, match="order"):
        store.query(order="sideways")
    with pytest.raises(ValueError, match="by must be"):
        store.query(by="recorded_at; DROP TABLE events")


async def test_paging_streams_every_row_once_across_pages(store):
    # the fixture's page is 7 rows; equal times make the (time, seq, id) key do the work
    await store.append([event(n, time=T0 + timedelta(seconds=n // 5), seq=n % 3) for n in range(53)])
    asc = await ids(store)
    assert len(asc) == len(set(asc)) == 53
    assert await ids(store, order="desc") == asc[::-1]
    assert await ids(store, limit=20) == asc[:20]
    assert await ids(store, limit=7, order="desc") == asc[::-1][:7]
    assert await ids(store, limit=0) == []


async def test_after_seq_and_last_seq(store):
    assert await store.last_seq() == 0
    await store.append([event(n) for n in range(1, 11)])
    assert await store.last_seq() == 10
    assert await ids(store, after_seq=8) == ["evt-9", "evt-10"]


async def test_stream_order_with_times_out_of_step(store):
    # publishers' clocks disagree: stream order is the sequence, whatever the times say
    await store.append([event(n, time=T0 - timedelta(seconds=n), seq=100 - n) for n in range(1, 21)])
    in_stream_order = [f"evt-{n}" for n in range(20, 0, -1)]
    assert await ids(store, by="stream_seq") == in_stream_order
    assert await ids(store, by="stream_seq", before_seq=85) == in_stream_order[:5]
    assert await ids(store, by="stream_seq", order="desc", limit=3) == in_stream_order[::-1][:3]
    with pytest.raises(ValueError, match="need a time column"):
        await ids(store, by="stream_seq", since=T0)


async def test_stats(store):
    assert (await store.stats()).count == 0
    await store.append([event(n, subject) for n, subject in enumerate(SUBJECTS)])
    stats = await store.stats()
    assert stats.count == len(SUBJECTS)
    assert (stats.first_time, stats.last_time) == (T0, T0 + timedelta(seconds=len(SUBJECTS) - 1))
    assert stats.stages == {"data_ready": 4, "rejected": 2, "signals_ready": 1}


async def test_compaction_deletes_before_the_cutoff_and_frees_the_space(store):
    await store.append([event(n) for n in range(200)])
    assert await store.compact(T0 + timedelta(days=150)) == 150
    assert await store.count() == 50
    assert (await anext(store.query())).id == "evt-150"
    assert await store.compact(T0 + timedelta(seconds=190), by="time") == 40
    assert await store.count() == 10
    assert await free_space_left(store) == 0


async def free_space_left(store) -> int:
    """SQLite: the free pages left in the file; PostgreSQL: the dead rows in the table, not yet vacuumed."""
    if isinstance(store, SqliteEventStore):
        with sqlite3.connect(store.path) as raw:
            return raw.execute("PRAGMA freelist_count").fetchone()[0]
    async with await psycopg.AsyncConnection.connect(store._url, autocommit=True) as raw:
        await raw.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")   # counts them from the table's pages
        return (await (await raw.execute(f"SELECT dead_tuple_count FROM pgstattuple('{TABLE}')")).fetchone())[0]


async def test_export_writes_json_lines_whose_body_is_the_same_json(store, tmp_path):
    batch = [event(n, trace="t1" if n % 2 else "t0") for n in range(25)]
    await store.append(batch)
    out = tmp_path / "t1.jsonl"
    written: list[int] = []
    assert await store.export(out, trace_id="t1", progress=written.append) == 12
    assert written and written[-1] == 12
    lines = [json.loads(line) for line in out.read_bytes().splitlines()]
    originals = {e.id: e for e in batch}
    assert [line["id"] for line in lines] == [f"evt-{n}" for n in range(1, 25, 2)]
    for line in lines:
        original = originals[line["id"]]
        assert line["body"] == json.loads(original.body)
        assert datetime.fromisoformat(line["time"].replace("Z", "+00:00")) == original.time
        assert line["event_ts"].endswith("Z") and line["headers"] == original.headers
    into = io.BytesIO()
    assert await store.export(into, subjects=["data_ready.>"]) == 25
    assert len(into.getvalue().splitlines()) == 25
    with pytest.raises(ValueError, match="unknown export format"):
        await store.export(into, fmt="xml")


async def test_parquet_export_names_pyarrow_when_it_is_missing(store, tmp_path):
    await store.append([event(1)])
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match="pyarrow"):
            await store.export(tmp_path / "out.parquet", fmt="parquet")
        return
    assert await store.export(tmp_path / "out.parquet", fmt="parquet") == 1
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["evt-1"]


async def test_reopening_keeps_the_events(where):
    async with opening(where) as first:
        await first.append([event(1)])
    second = await opening(where)
    try:
        assert await second.count() == 1
    finally:
        await second.close()
    if where.startswith("postgresql://"):
        return
    with sqlite3.connect(where) as raw:   # SQLite: the file is in WAL mode
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_newer_schema_version_is_refused(where):
    async with opening(where):
        pass
    await set_schema_version(where, 99)
    for options in ({}, {"read_only": True}):
        with pytest.raises((StoreError, DatabaseError), match="version 99, newer") as caught:
            await opening(where, **options)
        assert "\n" not in str(caught.value)


async def set_schema_version(where: str, version: int) -> None:
    if not where.startswith("postgresql://"):
        with sqlite3.connect(where) as raw:
            raw.execute(f"PRAGMA user_version = {version}")
        return
    async with await psycopg.AsyncConnection.connect(where, autocommit=True) as raw:
        await raw.execute("UPDATE tradeflow_schema SET version = %s WHERE component = 'events'", [version])


async def test_read_only_opens_need_a_store_and_never_write_it(where):
    for options in ({"read_only": True}, {"must_exist": True}):
        with pytest.raises(StoreError, match="no event store (at|in) .*is the recorder running") as caught:
            await opening(where, **options)
        assert "\n" not in str(caught.value)
    assert not await store_exists(where)
    async with opening(where) as store:
        await store.append([event(n) for n in range(5)])
    async with opening(where, read_only=True) as store:
        assert store.read_only
        assert await store.count() == 5 and (await store.stats()).count == 5
        assert [e.id async for e in store.query()] == [f"evt-{n}" for n in range(5)]
        with pytest.raises(StoreError, match="read-only"):
            await store.append([event(9)])
        with pytest.raises(StoreError, match="read-only"):
            await store.compact(T0 + timedelta(days=9))
        with pytest.raises(StoreError, match="read-only"):
            await store.acquire_writer(timeout=1)
    async with opening(where, must_exist=True) as store:
        assert await store.count() == 5


async def store_exists(where: str) -> bool:
    """Whether anything of an event store is at `where`: the file, or any tradeflow table in the database."""
    if not where.startswith("postgresql://"):
        return os.path.exists(where)
    async with await psycopg.AsyncConnection.connect(where) as raw:
        rows = await (await raw.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'tradeflow%'")).fetchall()
        return bool(rows)


async def test_twenty_thousand_events_in_batches_of_five_hundred(where):
    subjects = ["data_ready.GOOG", "signals_ready.GOOG", "data_ready.EURUSD"]
    async with opening(where) as store:
        for start in range(0, 20_000, 500):
            batch = [event(n, subjects[n % 3]) for n in range(start, start + 500)]
            assert await store.append(batch) == 500
        assert await store.append(batch) == 0
        assert await store.count() == 20_000
        assert await store.count(symbol="EURUSD") == 6_666
        assert await store.count(subjects=["signals_ready.*"]) == 6_667
        assert len([e async for e in store.query(subjects=["data_ready.>"])]) == 13_333
        assert await store.last_seq() == 19_999


# -- the writer fence: one writer per store ------------------------------------------------------------------


async def test_a_second_writer_waits_until_the_first_closes(where):
    first, second = await opening(where), await opening(where)
    try:
        await first.acquire_writer(timeout=5)
        await first.acquire_writer(timeout=0)   # already the writer: no-op
        with pytest.raises(StoreBusy, match="another writer.*waited 0.2 s") as caught:
            await second.acquire_writer(timeout=0.2)
        assert "\n" not in str(caught.value)
        waiting = asyncio.create_task(second.acquire_writer())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiting), 0.3)
        assert await first.append([event(1)]) == 1
        await first.close()
        await asyncio.wait_for(waiting, 10)
        assert await second.append([event(1), event(2)]) == 1
        assert await second.count() == 2
    finally:
        for store in (first, second):
            await store.close()   # a second close is a no-op


async def test_a_cancelled_wait_for_the_fence_leaves_nothing_behind(where):
    first, second, third = await opening(where), await opening(where), await opening(where)
    try:
        await first.acquire_writer(timeout=5)
        waiting = asyncio.create_task(second.acquire_writer())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiting), 0.3)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await first.close()
        await third.acquire_writer(timeout=5)   # the cancelled wait did not take the lock when it came free
        assert await third.append([event(1)]) == 1
    finally:
        for store in (first, second, third):
            await store.close()   # a second close is a no-op


async def test_open_store_picks_the_adapter_by_the_location_spelling(where):
    with pytest.raises(StoreError, match="no event store"):
        await open_store(where, read_only=True)
    async with open_store(where) as store:
        assert isinstance(store, PostgresEventStore if where.startswith("postgresql://") else SqliteEventStore)
        assert await store.append([event(1)]) == 1
    async with open_store(where, read_only=True) as store:
        assert store.read_only and await store.count() == 1


_HOLDER = """
import asyncio, sys
from replay.store.postgres import PostgresEventStore
from replay.store.sqlite import SqliteEventStore

async def main(where):
    adapter = PostgresEventStore if where.startswith("postgresql://") else SqliteEventStore
    store = await adapter.open(where)
    await store.acquire_writer(timeout=10)
    print("writer", flush=True)
    await asyncio.sleep(120)

asyncio.run(main(sys.argv[1]))
"""


async def test_the_writer_fence_goes_with_a_killed_process(where):
    async with opening(where):
        pass   # the store exists before the holder opens it
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", _HOLDER, where,
                                                  stdout=asyncio.subprocess.PIPE)
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"writer\n"
        async with opening(where) as store:
            with pytest.raises(StoreBusy, match="another writer") as caught:
                await store.acquire_writer(timeout=0.3)
            if isinstance(store, SqliteEventStore):
                assert f"pid {holder.pid}" in str(caught.value)
            holder.send_signal(signal.SIGKILL)
            assert await asyncio.wait_for(holder.wait(), 10) == -signal.SIGKILL
            await store.acquire_writer(timeout=10)
            assert await store.append([event(1)]) == 1
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


@contextlib.asynccontextmanager
async def writes_held(where: str):
    """Block every write to the store at `where` for the length of the block (reads go on)."""
    if not where.startswith("postgresql://"):
        raw = sqlite3.connect(where, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            raw.execute("COMMIT")
            raw.close()
        return
    async with await psycopg.AsyncConnection.connect(where) as raw, raw.transaction():
        await raw.execute(f"LOCK TABLE {TABLE} IN SHARE MODE")
        yield


async def test_a_reader_resuming_after_a_sequence_sees_a_batch_committed_late(where):
    # the reader keeps a resume point (as the recorder's last_seq or replay's after_seq do) and pages on
    # from it: a batch whose commit is held up must still reach it, and no later batch may land first
    first, second = await opening(where), await opening(where)
    reader = await opening(where, read_only=True)
    seen: list[int] = []

    async def read_on() -> None:
        seen.extend([e.stream_seq async for e in reader.query(by="stream_seq", after_seq=seen[-1] if seen else 0)])

    try:
        await first.acquire_writer(timeout=5)
        await first.append([event(n) for n in (1, 2, 3)])
        await read_on()
        async with writes_held(where):
            late = asyncio.create_task(first.append([event(n) for n in (4, 5, 6)]))
            with pytest.raises(StoreBusy):   # the next writer cannot commit 7-9 ahead of 4-6
                await second.acquire_writer(timeout=0.3)
            assert not late.done()
            await read_on()
            assert seen == [1, 2, 3] and await reader.last_seq() == 3
        assert await asyncio.wait_for(late, 10) == 3
        await read_on()
        await first.close()
        await second.acquire_writer(timeout=10)
        await second.append([event(n) for n in (7, 8, 9)])
        await read_on()
        assert seen == list(range(1, 10))
    finally:
        for store in (first, second, reader):
            await store.close()   # a second close is a no-op


# -- SQLite only: the file ------------------------------------------------------------------------------------


async def test_sqlite_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        await SqliteEventStore.open(tmp_path / "no" / "such" / "events.db")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(StoreError, match="a-folder.*unable to open"):
        await SqliteEventStore.open(tmp_path / "a-folder")


async def test_sqlite_a_corrupt_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(StoreError, match="garbage.db"):
        await SqliteEventStore.open(path)


async def test_sqlite_a_foreign_file_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(StoreError, match="app.db is not a tradeflow event store.*tables users"):
            await SqliteEventStore.open(path, read_only=read_only)
    assert path.read_bytes() == before


async def test_sqlite_read_only_opens_leave_the_file_as_it_was(tmp_path):
    path = tmp_path / "events.db"
    async with SqliteEventStore.open(path) as store:
        await store.append([event(n) for n in range(5)])
    before = path.read_bytes()
    async with SqliteEventStore.open(path, read_only=True) as store:
        assert await store.count() == 5
        with pytest.raises(StoreError, match="read-only"):
            await store.append([event(9)])
    assert path.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="not a tradeflow event store"):
        await SqliteEventStore.open(empty, read_only=True)


# -- PostgreSQL only: a shared database, a server that restarts -------------------------------------------


async def test_postgres_shares_a_database_with_other_tables_and_hides_the_password(pg_url):
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as raw:
        await raw.execute("CREATE TABLE events (name TEXT)")   # another application's, of the same name
        await raw.execute("INSERT INTO events VALUES ('theirs')")
    secret = pg_url.replace("postgres@", "postgres:s3cret@")
    with pytest.raises(StoreError, match=r"no event store in postgresql://postgres:\*\*\*@") as caught:
        await PostgresEventStore.open(secret, read_only=True)
    assert "s3cret" not in str(caught.value)
    async with PostgresEventStore.open(secret) as store:
        assert "s3cret" not in store.where
        assert await store.append([event(1)]) == 1
    async with await psycopg.AsyncConnection.connect(pg_url) as raw:
        assert await (await raw.execute("SELECT name FROM events")).fetchall() == [("theirs",)]


async def test_postgres_a_role_that_may_only_read_and_write_rows(pg_url):
    role = f"recorder_{os.urandom(4).hex()}"
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await admin.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}, PUBLIC")
    url = pg_url.replace("postgres@", f"{role}@")
    with pytest.raises(DatabaseError, match=r"^TRADEFLOW_STORE: cannot use .* as the event store: permission denied"):
        await PostgresEventStore.open(url)
    assert not await store_exists(pg_url)
    async with PostgresEventStore.open(pg_url):   # an administrator creates it
        pass
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute(f"GRANT SELECT, INSERT, DELETE ON {TABLE} TO {role}")
        await admin.execute(f"GRANT SELECT ON tradeflow_schema TO {role}")
    async with PostgresEventStore.open(url) as store:
        await store.acquire_writer(timeout=5)
        assert await store.append([event(1)]) == 1 and await store.count() == 1


async def test_postgres_the_store_recovers_after_the_server_restarts(postgres_server, pg_url):
    async with PostgresEventStore.open(pg_url) as writer, PostgresEventStore.open(pg_url) as reader:
        await writer.acquire_writer(timeout=5)
        await writer.append([event(n) for n in range(10)])
        assert await reader.count() == 10
        await asyncio.to_thread(postgres_server.halt)   # fast: every session ended, as in a restart
        try:
            with pytest.raises(StoreUnavailable, match="event store postgresql://") as caught:
                await writer.append([event(10)])   # the writer's session is gone with the server
            assert "\n" not in str(caught.value)
        finally:
            await asyncio.to_thread(postgres_server.resume)
        # the writer takes its lock back on a new session; the reader's pool replaces what broke unseen
        assert await writer.append([event(n) for n in range(10, 20)]) == 10
        assert await reader.count() == 20
        assert await reader.last_seq() == 19
        async with PostgresEventStore.open(pg_url) as other:
            with pytest.raises(StoreBusy):
                await other.acquire_writer(timeout=0.3)


async def test_postgres_a_lost_writer_whose_lock_was_taken_stops(pg_url):
    writer = await PostgresEventStore.open(pg_url)
    other = await PostgresEventStore.open(pg_url)
    try:
        await writer.acquire_writer(timeout=5)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = 'tradeflow event store writer'")
        await other.acquire_writer(timeout=5)   # the lost session's lock is free: another writer takes it
        with pytest.raises(StoreUnavailable):
            await writer.append([event(1)])
        with pytest.raises(StoreBusy, match="another writer holds the store now"):
            await writer.append([event(1)])
        assert await other.append([event(2)]) == 1
        assert await other.count() == 1
    finally:
        await writer.close()
        await other.close()
