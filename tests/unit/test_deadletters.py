"""Dead letters as data: reading one back, picking them by filter, and the message that redrives one."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from contracts import envelope as ce
from contracts.codec import decode
from contracts.deadletters import DLQ_ORIGINAL_ID, REDRIVE_COUNT, REDRIVE_OF, DeadLetter, redrive_id
from contracts.subjects import subject_matches
from services.runtime.deadletters import RedriveRefused, Selection, by_original, dead_letter_copy, redriven, select

NOW = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
BAR = b'{"symbol":"AAPL","ts":"2024-01-02T14:30:00Z","open":1,"high":2,"low":0.5,"close":1.5,"volume":10}'


def stored(copy, seq: int = 7) -> DeadLetter:
    """A copy as `tradeflow dlq` reads it back from the stream."""
    return DeadLetter.of(seq, copy.subject, copy.headers, copy.body)


def letter(service="strategy", subject="data_ready.AAPL", reason="undecodable", age=timedelta(minutes=5),
           headers=None, seq=7) -> DeadLetter:
    copy = dead_letter_copy(service, subject, BAR, headers, seq=100 + seq, deliveries=1, reason=reason,
                            error="bad\nthing", now=NOW - age)
    return stored(copy, seq)


def test_a_copy_reads_back_with_why_and_where_it_came_from():
    dl = letter(headers={"Nats-Msg-Id": "orig-1", "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})
    assert (dl.seq, dl.subject, dl.service, dl.reason, dl.error) == (7, "data_ready.AAPL", "strategy", "undecodable",
                                                                     "bad thing")
    assert (dl.original_id, dl.original_seq, dl.deliveries, dl.redrives) == ("orig-1", 107, 1, 0)
    assert dl.headers[DLQ_ORIGINAL_ID] == "orig-1" and dl.headers["Nats-Msg-Id"] != "orig-1"


def test_a_header_less_message_is_named_as_the_codec_names_it():
    dl = letter()
    assert dl.original_id == decode("data_ready.AAPL", BAR).id


def test_hostile_headers_do_not_break_reading():
    dl = DeadLetter.of(3, "dlq.x", {"tradeflow-dlq-deliveries": "many", "tradeflow-dlq-time": "yesterday",
                                    REDRIVE_COUNT: "-"}, None, NOW)
    assert (dl.service, dl.subject, dl.deliveries, dl.redrives, dl.dead_at, dl.body) == ("x", "", None, 0, NOW, b"")


def test_a_selection_needs_every_condition():
    letters = [letter(seq=1), letter("risk", seq=2), letter(subject="approved_ready.AAPL", reason="max_deliveries",
                                                           seq=3), letter(age=timedelta(days=2), seq=4)]
    pick = lambda **kw: [dl.seq for dl in select(letters, Selection(**kw), NOW)]  # noqa: E731
    assert pick() == [1, 2, 3, 4]
    assert pick(service="strategy") == [1, 3, 4]
    assert pick(subject="data_ready.*") == [1, 2, 4] and pick(subject="approved_ready.>") == [3]
    assert pick(reason="max_deliveries") == [3]
    assert pick(older_than=timedelta(days=1)) == [4] and pick(newer_than=timedelta(hours=1)) == [1, 2, 3]
    assert pick(seqs=frozenset({2, 4}), service="risk") == [2]


def test_a_redrive_has_an_id_of_its_own_the_same_every_time():
    dl = letter(headers={"ce-id": "evt-1", "Nats-Msg-Id": "evt-1", "traceparent": "00-" + "c" * 32 + "-"
                         + "d" * 16 + "-01"})
    out = redriven(dl)
    assert out.subject == "data_ready.AAPL" and out.body == BAR
    assert out.headers["ce-id"] == out.headers["Nats-Msg-Id"] == redrive_id(dl) == redriven(dl).headers["ce-id"]
    assert (out.headers[REDRIVE_COUNT], out.headers[REDRIVE_OF]) == ("1", "evt-1")
    assert out.headers["traceparent"] == dl.headers["traceparent"]   # the same journey
    assert not any(k.startswith("tradeflow-dlq-") for k in out.headers)
    assert decode(out.subject, out.body, out.headers).id == redrive_id(dl)


def test_a_redrive_that_fails_again_counts_up_to_the_limit():
    first = letter(headers={"ce-id": "evt-1"})
    again = stored(dead_letter_copy("strategy", "data_ready.AAPL", BAR, redriven(first).headers, seq=200,
                                    deliveries=1, reason="undecodable", error="still bad"))
    assert again.redrives == 1 and again.original_id != first.original_id
    assert redriven(again).headers[REDRIVE_COUNT] == "2"
    with pytest.raises(RedriveRefused, match="redriven 1 times already"):
        redriven(again, max_redrives=1)


@pytest.mark.parametrize("pattern, subject, expected", [
    ("data_ready.*", "data_ready.AAPL", True), ("data_ready.*", "data_ready", False),
    ("rejected.>", "rejected.risk.AAPL", True), ("rejected.>", "rejected", False), (">", "a.b", True),
    ("*.AAPL", "executed_ready.AAPL", True), ("data_ready.AAPL", "data_ready.AAPLX", False),
])
def test_subject_patterns(pattern, subject, expected):
    assert subject_matches(pattern, subject) is expected


def test_the_copy_id_is_the_same_for_the_worker_and_the_advisory():
    a = dead_letter_copy("quant", "signals_ready.X", b"{}", {}, seq=5, deliveries=3, reason="max_deliveries", error="")
    b = dead_letter_copy("quant", "signals_ready.X", b"{}", None, seq=5, deliveries=3, reason="terminated", error="")
    assert a.headers[ce.NATS_MSG_ID] == b.headers[ce.NATS_MSG_ID] and a.subject == "dlq.quant.signals_ready.X"


def test_copies_of_one_event_group_together_in_order_of_their_first():
    def copy(service: str, stream_seq: int, seq: int, subject: str = "data_ready.AAPL") -> DeadLetter:
        made = dead_letter_copy(service, subject, BAR, None, seq=stream_seq, deliveries=1, reason="undecodable",
                                error="bad", now=NOW)
        return stored(made, seq)

    a1, b1, a2, c, a3 = (copy("strategy", 40, 1), copy("strategy", 41, 2), copy("risk", 40, 3),
                         copy("risk", 40, 4, subject="approved_ready.AAPL"), copy("audit", 40, 5))
    assert [[x.seq for x in g] for g in by_original([a1, b1, a2, c, a3])] == [[1, 3, 5], [2], [4]]
    assert by_original([]) == []


def test_a_dead_letter_finds_its_original_id_whatever_the_case_of_ce_id():
    copy = dead_letter_copy("strategy", "data_ready.AAPL", BAR, {"CE-ID": "orig-9"}, seq=3, deliveries=1,
                            reason="undecodable", error="bad", now=NOW)
    assert stored(copy).original_id == "orig-9"
