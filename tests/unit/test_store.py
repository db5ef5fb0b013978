"""replay.store: the SQLite event store — idempotent appends, exact time windows, NATS subject
patterns, paging, compaction, export, and clear errors on bad files and bad filters."""

from __future__ import annotations

import io
import json
import sqlite3
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from contracts.codec import decode
from contracts.envelope import Envelope, headers_for
from replay.store import SqliteEventStore, StoredEvent, StoreError

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
SUBJECTS = ["data_ready.GOOG", "data_ready.A_B", "data_ready.AXB", "data_ready.BRK.B", "signals_ready.GOOG",
            "rejected.risk.GOOG", "rejected.quant.A_B"]


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


@pytest.fixture
async def store(tmp_path):
    async with SqliteEventStore.open(tmp_path / "events.db", page_size=7) as opened:
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
    with sqlite3.connect(store.path) as raw:
        assert raw.execute("PRAGMA freelist_count").fetchone() == (0,)


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


async def test_reopening_keeps_the_events(tmp_path):
    path = tmp_path / "events.db"
    async with SqliteEventStore.open(path) as first:
        await first.append([event(1)])
    second = await SqliteEventStore.open(path)
    try:
        assert await second.count() == 1
    finally:
        await second.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        await SqliteEventStore.open(tmp_path / "no" / "such" / "events.db")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(StoreError, match="a-folder.*unable to open"):
        await SqliteEventStore.open(tmp_path / "a-folder")


async def test_a_corrupt_file_is_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(StoreError, match="garbage.db"):
        await SqliteEventStore.open(path)


async def test_a_newer_schema_version_is_refused(tmp_path):
    path = tmp_path / "events.db"
    async with SqliteEventStore.open(path):
        pass
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        await SqliteEventStore.open(path)


async def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(StoreError, match="app.db is not a tradeflow event store.*tables users"):
            await SqliteEventStore.open(path, read_only=read_only)
    assert path.read_bytes() == before


async def test_read_only_opens_need_a_store_and_never_write_it(tmp_path):
    path = tmp_path / "events.db"
    with pytest.raises(StoreError, match="no event store at"):
        await SqliteEventStore.open(path, read_only=True)
    assert not path.exists()
    async with SqliteEventStore.open(path) as store:
        await store.append([event(n) for n in range(5)])
    before = path.read_bytes()
    async with SqliteEventStore.open(path, read_only=True) as store:
        assert await store.count() == 5 and (await store.stats()).count == 5
        assert [e.id async for e in store.query()] == [f"evt-{n}" for n in range(5)]
        with pytest.raises(StoreError, match="read-only"):
            await store.append([event(9)])
        with pytest.raises(StoreError, match="read-only"):
            await store.compact(T0 + timedelta(days=9))
    assert path.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="not a tradeflow event store"):
        await SqliteEventStore.open(empty, read_only=True)


async def test_twenty_thousand_events_in_batches_of_five_hundred(tmp_path):
    subjects = ["data_ready.GOOG", "signals_ready.GOOG", "data_ready.EURUSD"]
    async with SqliteEventStore.open(tmp_path / "events.db") as store:
        for start in range(0, 20_000, 500):
            batch = [event(n, subjects[n % 3]) for n in range(start, start + 500)]
            assert await store.append(batch) == 500
        assert await store.append(batch) == 0
        assert await store.count() == 20_000
        assert await store.count(symbol="EURUSD") == 6_666
        assert await store.count(subjects=["signals_ready.*"]) == 6_667
        assert len([e async for e in store.query(subjects=["data_ready.>"])]) == 13_333
        assert await store.last_seq() == 19_999
