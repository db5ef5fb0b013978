"""The worker's decisions, as plain functions of plain values: no NATS, no Redis, no clock.

services/runtime/worker.py does the I/O around them; tests/unit/test_decisions.py tries them alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

T = TypeVar("T")


def backoff_delay(schedule: Sequence[float], attempt: int) -> float:
    """Delay before retry number `attempt` (1-based), the last step repeating."""
    if not schedule:
        return 0.0
    return schedule[min(max(attempt, 1), len(schedule)) - 1]


def segments(items: Sequence[T], *, attempt: Callable[[T], int], ident: Callable[[T], str],
             suspect: str | None) -> list[list[T]]:
    """A batch cut for crash safety, in stream order: runs of first deliveries together, each redelivered
    item alone (it may be what crashed the last run), and the item the last run crashed on (`suspect`)
    alone at the end, so that its neighbours are acked before it is tried."""
    cut: list[list[T]] = []
    last: list[T] = []
    for item in items:
        if ident(item) == suspect:
            last.append(item)
        elif attempt(item) > 1 or not cut or attempt(cut[-1][-1]) > 1:
            cut.append([item])
        else:
            cut[-1].append(item)
    return cut + [[item] for item in last]


Settle = tuple[Literal["nak", "dead_letter"], float]


def after_handler_error(attempt: int, max_deliver: int, schedule: Sequence[float]) -> Settle:
    """What to do with an input whose handler raised on delivery `attempt`: nak it with the backoff's delay,
    or, at the last delivery JetStream would make, dead-letter it."""
    if attempt >= max_deliver:
        return "dead_letter", 0.0
    return "nak", backoff_delay(schedule, attempt)


def undelivered(num_ack_pending: int, in_hand: int) -> int:
    """After fetches failed or deliveries were lost: how many deliveries JetStream counts as pending that this
    worker never got (lost with a connection, or with a consumer leader). A stateful agent waits them out
    (ack_wait) before going on, or it would see them after newer inputs."""
    return max(0, num_ack_pending - in_hand)


def lost_deliveries(last: int | None, numbers: Sequence[int]) -> tuple[int, int | None]:
    """How many deliveries the consumer made that never reached this worker, from the consumer's numbers
    (`numbers`, in the order they came; `last`, the number of the delivery before them, None at the start),
    and the last number now. A jump forward is deliveries lost on the way (a connection that dropped, a
    consumer leader that died with them on its route); a jump back is a consumer that went back to an
    older position (after a kill -9 of nats-server), which loses nothing."""
    lost = 0
    for number in numbers:
        if last is not None and number > last + 1:
            lost += number - last - 1
        last = number
    return lost, last


def mark_before_ack(*, stateful: bool, waits_for_dedup: bool, outputs: bool, gap_below: bool, kept: int,
                    limit: int) -> bool:
    """Whether a batch's dedup marks must be written before its inputs are acked, rather than after.

    The marks are what the next start's rebuild folds above the consumer's ack floor. An input that is
    acked but not yet marked when the service dies is folded in from the ack floor (every input below
    it is acked too), or, if nats-server lost that ack as well, delivered again and handled again, in
    stream order, its outputs dropped by the stream's duplicate window (the same ids). Either way
    nothing is lost and nothing doubles, so the marks can go after the acks, many batches at a time.
    They go first, as the batch's last step before its acks, when:
      - the agent waits for Redis (`wait_for_dedup`, execution) and the batch has outputs: a fill is
        acked only once its input is marked (a batch of bars that fills nothing waits like any other);
      - there is a gap below (an input naked for a retry): inputs acked above it are above the ack
        floor, and only their marks would tell the rebuild they are done;
      - more than `limit` marks are kept (Redis away): the agent then waits for Redis.
    A stateless agent's marks only spare a redelivery its handling: they can always wait."""
    return stateful and ((waits_for_dedup and outputs) or gap_below or kept > limit)


def mark_failed(*, stateful: bool, waits_for_dedup: bool, pending: int, limit: int) -> Literal["keep", "retry"]:
    """Redis refused a batch's marks: keep them to write when it is back, or (an agent that waits for
    Redis, or too many kept) roll the batch back and retry it until Redis is back."""
    if stateful and (waits_for_dedup or pending > limit):
        return "retry"
    return "keep"


def marks_due(pending: int, *, since_flush: float, interval: float, batch: int) -> bool:
    """Whether the marks kept after their acks are to be written now: a full batch of them, or the
    oldest has waited `interval` seconds."""
    return pending >= batch or (pending > 0 and since_flush >= interval)
