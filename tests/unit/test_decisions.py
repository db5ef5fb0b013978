"""The worker's decisions, without servers: how a batch is cut, what a handler error leads to, when marks go."""

import pytest

from services.runtime.decisions import (after_handler_error, lost_deliveries, mark_before_ack, mark_failed,
                                        marks_due, segments, undelivered)


def cut(items, suspect=None):
    """items: (id, delivery attempt)."""
    return [[ident for ident, _ in seg] for seg in
            segments(items, attempt=lambda item: item[1], ident=lambda item: item[0], suspect=suspect)]


def test_first_deliveries_stay_together_in_stream_order():
    assert cut([("a", 1), ("b", 1), ("c", 1)]) == [["a", "b", "c"]]


def test_a_redelivered_input_is_handled_alone_between_its_neighbours():
    assert cut([("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 3), ("f", 4)]) == [["a"], ["b"], ["c", "d"], ["e"], ["f"]]


def test_the_input_the_last_run_died_on_goes_last_and_alone():
    assert cut([("a", 1), ("b", 2), ("c", 1)], suspect="b") == [["a", "c"], ["b"]]
    assert cut([("a", 1), ("b", 1)], suspect="zz") == [["a", "b"]]


def test_an_empty_batch_has_no_segments():
    assert cut([]) == []


@pytest.mark.parametrize(("attempt", "expected"), [
    (1, ("nak", 0.5)), (2, ("nak", 1.0)), (4, ("nak", 5.0)), (5, ("dead_letter", 0.0)), (9, ("dead_letter", 0.0)),
])
def test_a_handler_error_naks_with_backoff_until_the_last_delivery(attempt, expected):
    assert after_handler_error(attempt, max_deliver=5, schedule=[0.5, 1.0, 5.0]) == expected


def test_deliveries_a_worker_never_got_are_what_jetstream_counts_beyond_its_hands():
    assert undelivered(num_ack_pending=10, in_hand=4) == 6
    assert undelivered(num_ack_pending=3, in_hand=4) == 0
    assert undelivered(num_ack_pending=0, in_hand=0) == 0


def test_a_jump_in_the_consumer_s_numbers_is_deliveries_lost_on_the_way():
    assert lost_deliveries(None, [7, 8, 9]) == (0, 9)     # the first batch: nothing to compare with
    assert lost_deliveries(9, [10, 11]) == (0, 11)
    assert lost_deliveries(9, [12, 13]) == (2, 13)        # 10 and 11 went out and never came
    assert lost_deliveries(9, [10, 14, 15, 17]) == (4, 17)
    assert lost_deliveries(9, [4, 5, 6]) == (0, 6)        # the consumer went back (nats-server lost its position)
    assert lost_deliveries(9, []) == (0, 9)


def before(**kw):
    args = {"stateful": True, "waits_for_dedup": False, "outputs": True, "gap_below": False, "kept": 0,
            "limit": 100} | kw
    return mark_before_ack(**args)


def test_marks_wait_for_the_acks_unless_something_needs_them_first():
    assert not before()                                  # the ack floor covers an acked, unmarked input
    assert before(waits_for_dedup=True)                  # execution: a fill is acked only once marked
    assert not before(waits_for_dedup=True, outputs=False)   # ... a batch of bars that filled nothing waits
    assert before(waits_for_dedup=True, outputs=False, gap_below=True)
    assert before(gap_below=True)                        # acked above a naked input: only its mark says done
    assert before(kept=101)                              # Redis away too long: wait for it
    assert not before(kept=100)
    assert not before(stateful=False, waits_for_dedup=True, gap_below=True, kept=10**6)   # no state to rebuild


def test_marks_redis_refused_are_kept_unless_the_agent_waits_for_redis():
    assert mark_failed(stateful=True, waits_for_dedup=False, pending=10, limit=100) == "keep"
    assert mark_failed(stateful=True, waits_for_dedup=True, pending=1, limit=100) == "retry"
    assert mark_failed(stateful=True, waits_for_dedup=False, pending=101, limit=100) == "retry"
    assert mark_failed(stateful=False, waits_for_dedup=False, pending=10**6, limit=100) == "keep"


def test_kept_marks_go_when_a_batch_of_them_is_full_or_the_oldest_has_waited():
    assert not marks_due(0, since_flush=10.0, interval=0.05, batch=256)
    assert not marks_due(3, since_flush=0.01, interval=0.05, batch=256)
    assert marks_due(3, since_flush=0.05, interval=0.05, batch=256)
    assert marks_due(256, since_flush=0.0, interval=0.05, batch=256)
