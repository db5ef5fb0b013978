"""The fill ledger's port: one fill per order id, written before the fill is published; the first fill
recorded for an order stands for good.

It is the source of truth for what was filled. With two execution processes alive on one durable
(a Recreate deployment whose old pod is still running, a partition, a paused process whose messages
JetStream gave to the other), both may handle one order: each records its fill, the ledger keeps the
first (a unique order id), and `record` answers, for every fill given, the fill that stands — the one
just inserted, or the one another process inserted first. The caller publishes that one (same event
id, same body), never its own.

`lookup` is an optimization, `record`'s answer the truth. A ledger remembers the order ids it holds
(those there when it was opened, and every one `record` has answered for since), and `lookup` reads
only those: a new order, which is nearly every order, costs no read before it is filled. That memory is
a positive cache: an id in it is in the ledger for good (fills are never deleted or changed), but an
id missing from it may have been filled since by another process. So a miss is never taken as "never
filled" where it matters, before a publish: `record` inserts-or-keeps and reads back what stands in
one transaction, and execution handles the batch again with another process's fill when it is not its
own (FillConflict). On a ledger one process owns, `lookup` misses nothing.

A fill that stands is published again by whoever handles its order again; the stream's duplicate
window (TRADEFLOW_DUPLICATE_WINDOW) drops it by its event id. A process frozen for longer than the
window would add a second copy (same ce-id) when it wakes. And two alive each see only part of the
stream: a fill at the next bar's open may be made on a later bar (the bar went to the other), and one
symbol's fills may be published out of order (a frozen process's batch after the other's newer ones).
So the ledger makes a second process harmless to what is filled, not a way to run two: execution runs
as one instance.

    Transient
     ├── EffectFailed
     │    └── LedgerUnavailable   the ledger cannot be read or written for now: the batch is retried
     └── FillConflict             another process's fill stands for an order of the batch: handled again
    ConfigError                   the ledger cannot be opened (TRADEFLOW_EXECUTION_LEDGER)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import msgspec

from contracts.errors import EffectFailed, Transient
from contracts.events import OrderFilled

SETTING = "TRADEFLOW_EXECUTION_LEDGER"
SCHEMA_VERSION = 1
ENCODE = msgspec.json.Encoder().encode
DECODE = msgspec.json.Decoder(OrderFilled).decode


class LedgerUnavailable(EffectFailed):
    """Raised when the ledger cannot be read or written for now (locked past the busy timeout, the database
    unreachable, a transaction the server aborted): the batch is retried in place."""

    reason = "ledger_unavailable"


class FillConflict(Transient):
    """Raised when the ledger holds another process's fill for an order of the batch: the batch's state is
    rolled back and it is handled again, with the fill that stands."""

    reason = "fill_conflict"


class Recorded(NamedTuple):
    """What `record` answers: the fill that stands for each order id given, and which of them it inserted."""

    standing: dict[str, OrderFilled]
    inserted: frozenset[str]


class FillLedger(Protocol):
    """Where execution's fills are recorded, one per order id; one adapter per storage."""

    where: str   # the ledger's location as messages show it (a path, or a URL with its password hidden)

    async def lookup(self, order_ids: Sequence[str]) -> dict[str, OrderFilled]:
        """The recorded fills of those of `order_ids` this ledger knows to be filled (see the module's doc)."""
        ...

    async def record(self, fills: Sequence[OrderFilled]) -> Recorded:
        """Insert the fills whose order has none yet, in one transaction; for each order id given, the fill
        that stands (the one given, or the one recorded before it), and which were inserted now."""
        ...

    async def recent(self, limit: int = 100, symbol: str | None = None) -> list[OrderFilled]:
        """The last `limit` fills recorded (of `symbol`), newest first."""
        ...

    async def count(self) -> int:
        """How many fills the ledger holds."""
        ...

    async def close(self) -> None: ...


def first_per_order(fills: Sequence[OrderFilled]) -> list[OrderFilled]:
    """One fill per order id, the first given, in order id order (so that two writers of overlapping
    batches take their row locks in one order, and never deadlock)."""
    first: dict[str, OrderFilled] = {}
    for fill in fills:
        first.setdefault(fill.order_id, fill)
    return [first[order_id] for order_id in sorted(first)]


def known(order_ids: Sequence[str], held: set[str]) -> list[str]:
    """Those of `order_ids` (once each) that the ledger's memory holds."""
    return [order_id for order_id in dict.fromkeys(order_ids) if order_id in held]
