"""replay.store, differential: the same random batches (subjects across stages and symbols, tied times,
duplicate ids within and across batches, sequences out of order) appended to both adapters give the
same answers to random queries (every filter, both orders, limits, small pages), the same counts,
stats and JSON lines; and the answers are the ones a plain Python reading of the filters gives."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from contracts.subjects import subject_matches
from replay.store import SqliteEventStore, StoredEvent
from replay.store.postgres import PostgresEventStore

T0 = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
END = datetime(9999, 1, 1, tzinfo=timezone.utc)
STAGES = ["data_ready", "signals_ready", "executed_ready"]
SYMBOLS = ["GOOG", "A_B", "A%B", "BRK.B", "x'y", "Ü1", "A+B", "goog"]
IDS = [f"e{n}" for n in range(24)] + ["E1", "é", "z", "e-1", "e_1", "e10a"]   # byte order matters on ties
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=6)


@st.composite
def subjects(draw) -> str:
    symbol = draw(st.sampled_from(SYMBOLS))
    if draw(st.booleans()):
        return f"rejected.{draw(st.sampled_from(['quant', 'risk']))}.{symbol}"
    return f"{draw(st.sampled_from(STAGES))}.{symbol}"


@st.composite
def events(draw) -> StoredEvent:
    subject = draw(subjects())
    stage, _, rest = subject.partition(".")
    symbol = rest.partition(".")[2] if stage == "rejected" else rest
    event_id = draw(st.sampled_from(IDS))
    return StoredEvent(
        id=event_id, type=f"tradeflow.{stage}.v1", subject=subject, stage=stage, symbol=symbol,
        source=draw(st.sampled_from(["data", "risk"])),
        time=T0 + timedelta(seconds=draw(st.integers(0, 6)), microseconds=draw(st.sampled_from([0, 1, 999_999]))),
        event_ts=T0 + timedelta(minutes=draw(st.integers(-3, 4))), trace_id=draw(st.sampled_from(["t0", "t1", "t2"])),
        causation_id=draw(st.none() | st.sampled_from(IDS[:4])), stream_seq=draw(st.integers(0, 20)),
        headers=draw(st.dictionaries(st.sampled_from(["ce-id", "traceparent", "x-é"]), TEXT, max_size=2)),
        body=orjson.dumps({"symbol": symbol, "note": draw(TEXT)}), recorded_at=T0)


@st.composite
def patterns(draw, among: st.SearchStrategy[str]) -> str:
    """One of the subjects `among`, some tokens made `*`, perhaps cut short (or not) and ended by `>`."""
    tokens = [draw(st.sampled_from(["*", token])) if draw(st.booleans()) else token
              for token in draw(among).split(".")]
    if draw(st.booleans()):
        tokens = [*tokens[:draw(st.integers(1, len(tokens)))], ">"]   # all of them, then `>`: never the subject itself
    return ".".join(tokens)


@st.composite
def filters(draw, among: st.SearchStrategy[str]) -> dict[str, Any]:
    """Any filters, the subject patterns made from the subjects `among` (so that they match something)."""
    chosen: dict[str, Any] = {"by": draw(st.sampled_from(["time", "event_ts", "stream_seq"]))}
    step = {"time": timedelta(seconds=1), "event_ts": timedelta(minutes=1)}.get(chosen["by"])
    if step is not None:
        for name in ("since", "until"):
            if draw(st.booleans()):
                chosen[name] = T0 + draw(st.integers(-3, 7)) * step
    if draw(st.booleans()):
        chosen["subjects"] = draw(st.lists(patterns(among), min_size=1, max_size=2))
    for name, values in (("symbol", st.sampled_from(SYMBOLS)), ("trace_id", st.sampled_from(["t0", "t1", "zz"])),
                         ("causation_id", st.sampled_from(IDS[:4])), ("after_seq", st.integers(-1, 21)),
                         ("before_seq", st.integers(0, 21))):
        if draw(st.integers(0, 3)) == 0:
            chosen[name] = draw(values)
    return chosen


def queries(among: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[dict[str, Any], str, int | None]]]:
    return st.lists(st.tuples(filters(among), st.sampled_from(["asc", "desc"]), st.none() | st.integers(0, 12)),
                    min_size=1, max_size=3)


def expected(appended: list[StoredEvent], chosen: dict[str, Any], order: str, limit: int | None) -> list[StoredEvent]:
    """The answer read straight off the filters: first append of an id wins, then filter, sort, cut."""
    kept: dict[str, StoredEvent] = {}
    for e in appended:
        kept.setdefault(e.id, e)
    by = chosen["by"]

    def ok(e: StoredEvent) -> bool:
        at = getattr(e, by)
        return (("since" not in chosen or at >= chosen["since"]) and ("until" not in chosen or at < chosen["until"])
                and all(getattr(e, name) == chosen[name] for name in ("symbol", "trace_id", "causation_id")
                        if name in chosen)
                and ("after_seq" not in chosen or e.stream_seq > chosen["after_seq"])
                and ("before_seq" not in chosen or e.stream_seq < chosen["before_seq"])
                and ("subjects" not in chosen or any(subject_matches(p, e.subject) for p in chosen["subjects"])))

    rows = sorted(filter(ok, kept.values()), key=lambda e: (getattr(e, by), e.stream_seq, e.id),
                  reverse=order == "desc")
    return rows if limit is None else rows[:limit]


@pytest.fixture
async def both(tmp_path, pg_url):
    async with SqliteEventStore.open(tmp_path / "events.db", page_size=3) as lite, \
            PostgresEventStore.open(pg_url, page_size=3) as pg:
        yield lite, pg


# modest, so the suite stays fast; no `explain` phase (it traces every line, and a failure would take minutes);
# a failure's shrinking may take hypothesis's own limit of 5 minutes, hence the longer timeout
@pytest.mark.timeout(450)
@settings(max_examples=30, deadline=None, database=None, phases=[Phase.explicit, Phase.generate, Phase.shrink],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(events(), max_size=10), min_size=1, max_size=3), data=st.data(),
       probe=st.sampled_from(IDS))
async def test_both_adapters_give_the_same_answers(both, batches, data, probe):
    stores = both
    for store in stores:   # each example starts from empty stores
        await store.compact(END, by="time")
    appended = [e for batch in batches for e in batch]
    added = [[await store.append(batch) for batch in batches] for store in stores]
    assert added[0] == added[1] and sum(added[0]) == len({e.id for e in appended})
    among = st.sampled_from(sorted({e.subject for e in appended})) if appended else subjects()
    for chosen, order, limit in data.draw(queries(among), label="queries"):
        answers = [[e async for e in store.query(order=order, limit=limit, **chosen)] for store in stores]
        assert answers[0] == answers[1] == expected(appended, chosen, order, limit)
        counts = [await store.count(**chosen) for store in stores]
        assert counts[0] == counts[1] == len(expected(appended, chosen, order, None))
    for ask in ("stats", "last_seq"):
        lite, pg = [await getattr(store, ask)() for store in stores]
        assert lite == pg
    assert (await stores[0].get(probe)) == (await stores[1].get(probe))
    exported = data.draw(filters(among), label="exported")
    lines = []
    for store in stores:
        out = io.BytesIO()
        await store.export(out, **exported)
        lines.append(out.getvalue())
    assert lines[0] == lines[1]
