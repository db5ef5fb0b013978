"""Dead letters: what the DLQ stream holds, which of them a filter picks, and how one goes back.

A dead letter is stored on `dlq.<service>.<original subject>` with the original body and
headers, plus `tradeflow-dlq-*` headers saying why (reason, last error, service, original
stream sequence, deliveries, time). Its id, for people and the CLI, is its DLQ stream sequence.

Redrive publishes the original body and headers back to the original subject under a new
id derived from the original id and the redrive count:

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
from contracts.subjects import DLQ_STREAM, dlq_subject, subject_matches
from services.runtime.publish import Outgoing

DLQ_REASON = "tradeflow-dlq-reason"
DLQ_ERROR = "tradeflow-dlq-error"
DLQ_SERVICE = "tradeflow-dlq-service"
DLQ_SUBJECT = "tradeflow-dlq-subject"
DLQ_SEQUENCE = "tradeflow-dlq-sequence"
DLQ_DELIVERIES = "tradeflow-dlq-deliveries"
DLQ_TIME = "tradeflow-dlq-time"
DLQ_ORIGINAL_ID = "tradeflow-dlq-original-id"   # the Nats-Msg-Id it came with (the copy needs its own)
REDRIVE_COUNT = "tradeflow-redrive-count"
REDRIVE_OF = "tradeflow-redrive-of"
MAX_REDRIVES = 3


class RedriveRefused(Exception):
    """Raised for a dead letter that was redriven `max_redrives` times already."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One message in the DLQ, with why it is there."""

    seq: int                      # its DLQ stream sequence
    subject: str                  # the subject it was consumed from
    service: str
    reason: str
    error: str
    original_id: str
    original_seq: int | None
    deliveries: int | None
    dead_at: datetime
    redrives: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def of(cls, seq: int, dlq_subject: str, headers: dict[str, str] | None, body: bytes | None,
           stored_at: datetime | None = None) -> DeadLetter:
        """The dead letter stored at DLQ sequence `seq` (missing headers are filled from the subject)."""
        headers = dict(headers or {})
        body = body or b""
        _, service, original = (dlq_subject.split(".", 2) + ["", ""])[:3]
        subject = headers.get(DLQ_SUBJECT) or original
        original_id = (headers.get(ce.CE_ID) or headers.get(DLQ_ORIGINAL_ID)
                       or ce.content_id(subject, body))   # as the codec names a header-less message
        return cls(seq=seq, subject=subject, service=headers.get(DLQ_SERVICE) or service,
                   reason=headers.get(DLQ_REASON, "unknown"), error=headers.get(DLQ_ERROR, ""),
                   original_id=original_id, original_seq=_int(headers.get(DLQ_SEQUENCE)),
                   deliveries=_int(headers.get(DLQ_DELIVERIES)),
                   dead_at=_time(headers.get(DLQ_TIME)) or stored_at or datetime.now(timezone.utc),
                   redrives=_int(headers.get(REDRIVE_COUNT)) or 0, headers=headers, body=body)


def dead_letter_copy(service: str, subject: str, body: bytes, headers: Mapping[str, str] | None, *, seq: int,
                     deliveries: int, reason: str, error: str, now: datetime | None = None) -> Outgoing:
    """The DLQ copy of the message at PIPELINE sequence `seq` that `service` gives up on.

    Its Nats-Msg-Id derives from the service and the sequence, so a second copy of the same
    message (the worker's and the advisory capture's) is dropped by the DLQ's duplicate window.
    """
    copied = {k: v for k, v in (headers or {}).items() if k != ce.NATS_MSG_ID}
    if (headers or {}).get(ce.NATS_MSG_ID):
        copied[DLQ_ORIGINAL_ID] = headers[ce.NATS_MSG_ID]
    copied.update({
        ce.NATS_MSG_ID: dead_letter_id(service, seq),
        DLQ_REASON: reason,
        DLQ_ERROR: " ".join(error.split())[:512],
        DLQ_SERVICE: service,
        DLQ_SUBJECT: subject,
        DLQ_SEQUENCE: str(seq),
        DLQ_DELIVERIES: str(deliveries),
        DLQ_TIME: ce.rfc3339(now or datetime.now(timezone.utc)),
    })
    return Outgoing(dlq_subject(service, subject), body, copied)


def dead_letter_id(service: str, seq: int) -> str:
    return ce.derive_id("dlq", f"{service}:{seq}", 0)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _time(value: str | None) -> datetime | None:
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except ValueError:
        return None
    return ts if ts is None or ts.tzinfo else ts.replace(tzinfo=timezone.utc)


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


def redrive_id(letter: DeadLetter) -> str:
    """The id a redrive of `letter` publishes: the same for every redrive of this dead letter."""
    return ce.derive_id("redrive", letter.original_id, letter.redrives + 1)


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
