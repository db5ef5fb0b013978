"""Dead letters on JetStream: which of them a filter picks, and how one goes back.

What a dead letter carries, and reading one, is contracts/deadletters.py's. Redrive publishes the
original body and headers back to the original subject under a new id derived from the original
id and the redrive count:

    ce-id = Nats-Msg-Id = derive_id("redrive", <original id>, <count>)
    tradeflow-redrive-count: <count>        tradeflow-redrive-of: <original id>

so redriving the same dead letter twice publishes the same id, which the stream's duplicate
window and every service's dedup registry turn into one delivery, and the execution ledger
into one fill. A redriven message that fails again comes back with its count, and past
`max_redrives` it is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone

import msgspec

from contracts import envelope as ce
from contracts.deadletters import REDRIVE_COUNT, REDRIVE_OF, DeadLetter, dead_letter_headers, redrive_id
from contracts.subjects import DLQ_STREAM, dlq_subject, subject_matches
from services.runtime.publish import Outgoing

MAX_REDRIVES = 3


class RedriveRefused(Exception):
    """Raised for a dead letter that was redriven `max_redrives` times already."""


def dead_letter_copy(service: str, subject: str, body: bytes, headers: Mapping[str, str] | None, *, seq: int,
                     deliveries: int, reason: str, error: str, now: datetime | None = None) -> Outgoing:
    """The DLQ copy of the message at PIPELINE sequence `seq` that `service` gives up on (its headers:
    `dead_letter_headers`)."""
    return Outgoing(dlq_subject(service, subject), body,
                    dead_letter_headers(service, subject, headers, seq=seq, deliveries=deliveries, reason=reason,
                                        error=error, now=now))


class Selection(msgspec.Struct, frozen=True, kw_only=True):
    """Which dead letters a command covers; every condition given must hold."""

    seqs: frozenset[int] = frozenset()
    service: str | None = None
    subject: str | None = None          # a NATS pattern over the original subject
    reason: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None

    def picks(self, letter: DeadLetter, now: datetime) -> bool:
        age = now - letter.dead_at
        return ((not self.seqs or letter.seq in self.seqs)
                and (self.service is None or letter.service == self.service)
                and (self.subject is None or subject_matches(self.subject, letter.subject))
                and (self.reason is None or letter.reason == self.reason)
                and (self.older_than is None or age >= self.older_than)
                and (self.newer_than is None or age < self.newer_than))


def select(letters: Iterable[DeadLetter], selection: Selection, now: datetime | None = None) -> list[DeadLetter]:
    now = now or datetime.now(timezone.utc)
    return [letter for letter in letters if selection.picks(letter, now)]


def by_original(letters: Iterable[DeadLetter]) -> list[list[DeadLetter]]:
    """The dead letters grouped by the event they are copies of, in order of each group's first: one bad bar
    that strategy, risk, execution and audit each dead-lettered is one group of four (the same stream
    sequence, or, for a copy that does not say its sequence, the same original id)."""
    groups: dict[tuple[str, object], list[DeadLetter]] = {}
    for letter in letters:
        key = (letter.subject, letter.original_seq) if letter.original_seq is not None else ("", letter.original_id)
        groups.setdefault(key, []).append(letter)
    return list(groups.values())


def redriven(letter: DeadLetter, max_redrives: int = MAX_REDRIVES) -> Outgoing:
    """The message that sends `letter` back to its subject; RedriveRefused past `max_redrives`."""
    if letter.redrives >= max_redrives:
        raise RedriveRefused(f"dead letter {letter.seq} was redriven {letter.redrives} times already "
                             f"(at most {max_redrives}): look at why it keeps failing, or purge it")
    headers = {k: v for k, v in letter.headers.items() if not k.startswith("tradeflow-dlq-")}
    new_id = redrive_id(letter)
    headers.update({ce.NATS_MSG_ID: new_id, REDRIVE_COUNT: str(letter.redrives + 1), REDRIVE_OF: letter.original_id})
    if ce.CE_ID in headers:   # an enveloped message keeps its envelope under the new id
        headers[ce.CE_ID] = new_id
    return Outgoing(letter.subject, letter.body, headers)


async def redrive(publisher, jsm, letter: DeadLetter, max_redrives: int = MAX_REDRIVES):
    """Send `letter` back to its subject and, once that is stored, take it out of the DLQ; (PubAck, subject).
    RedriveRefused past `max_redrives`. Redriving one dead letter twice has one effect (a derived id)."""
    out = redriven(letter, max_redrives)
    [ack] = await publisher.publish([out])
    await jsm.delete_msg(DLQ_STREAM, letter.seq)
    return ack, out.subject
