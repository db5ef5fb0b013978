"""Which stream positions a stateful agent's state holds: its tracking record (as `eventsourcing`'s
process applications keep one beside their state), kept by the runtime in the service's memory.

A stateful agent's state is folded from the stream, so the stream sequences folded into it say
exactly which inputs are done for it, whatever the consumer or Redis remember:

- nats-server writes a file-stored consumer's positions (delivered, acknowledged) a little after the
  fact, at most ten times a second (consumerFileStore.flushLoop); after a kill -9 of nats-server the
  consumer resumes from an older position and delivers again, as first deliveries (num_delivered 1),
  inputs already applied and acknowledged. No setting makes an R1 consumer's acks durable before the
  ack's reply; an R3 consumer's state is in its Raft log and does not go back.
- Redis may have lost their marks too (killed in the same second, or away).

The record is the ack floor the state covers (every input at or below it is folded in, or was given
up on) and the sequences above it that are folded in or given up on. An input it holds is done: it is
acknowledged again and not handled. One it does not hold is not in the state, whatever its delivery
count says, and is handled. The floor moves up with the consumer's ack floor as JetStream reports it
(everything at or below that was acknowledged by this service after applying it), which keeps the set
to the inputs of the last second or so, plus what sits above an input waiting for a retry.
"""

from __future__ import annotations

from collections.abc import Iterable


class Tracking:
    """The stream positions folded into a stateful agent's state (or given up on): everything at or
    below `floor`, and the sequences in `above`."""

    __slots__ = ("floor", "above")

    def __init__(self, floor: int = 0, above: Iterable[int] = ()) -> None:
        self.floor = floor
        self.above = {seq for seq in above if seq > floor}

    def holds(self, seq: int) -> bool:
        """Whether the input at stream sequence `seq` is in the state already (or was given up on)."""
        return seq <= self.floor or seq in self.above

    def add(self, seqs: Iterable[int]) -> None:
        """Record inputs as folded into the state (or given up on): only once their outputs are durable."""
        floor = self.floor
        self.above.update(seq for seq in seqs if seq > floor)

    def advance(self, ack_floor: int) -> None:
        """Move the floor up to the consumer's ack floor (never down: after a kill -9 of nats-server a
        consumer reports an older one), forgetting the sequences it now covers."""
        if ack_floor <= self.floor:
            return
        self.floor = ack_floor
        self.above = {seq for seq in self.above if seq > ack_floor}

    def __len__(self) -> int:
        return len(self.above)

    def __repr__(self) -> str:
        return f"Tracking(floor={self.floor}, above={len(self.above)})"
