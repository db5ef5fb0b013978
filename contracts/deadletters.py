"""Dead letters on the wire: the headers a DLQ copy carries, building them, and reading a stored one back.

A dead letter is stored on `dlq.<service>.<original subject>` with the original body and
headers, plus `tradeflow-dlq-*` headers saying why (reason, last error, service, original
stream sequence, deliveries, time). Its id, for people and the CLI, is its DLQ stream sequence.
A redriven message carries `tradeflow-redrive-count` and `tradeflow-redrive-of` (see
services/runtime/deadletters.py, which selects and redrives them).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import msgspec

from contracts import envelope as ce

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
        original_id = (ce.header(headers, ce.CE_ID) or headers.get(DLQ_ORIGINAL_ID)
                       or ce.content_id(subject, body))   # as the codec names a header-less message
        return cls(seq=seq, subject=subject, service=headers.get(DLQ_SERVICE) or service,
                   reason=headers.get(DLQ_REASON, "unknown"), error=headers.get(DLQ_ERROR, ""),
                   original_id=original_id, original_seq=_int(headers.get(DLQ_SEQUENCE)),
                   deliveries=_int(headers.get(DLQ_DELIVERIES)),
                   dead_at=_time(headers.get(DLQ_TIME)) or stored_at or datetime.now(timezone.utc),
                   redrives=_int(headers.get(REDRIVE_COUNT)) or 0, headers=headers, body=body)


def dead_letter_headers(service: str, subject: str, headers: Mapping[str, str] | None, *, seq: int,
                        deliveries: int, reason: str, error: str, now: datetime | None = None) -> dict[str, str]:
    """The headers of the DLQ copy (on `dlq_subject(service, subject)`, with the original body) of the message
    at PIPELINE sequence `seq` that `service` gives up on: the original's, and why.

    Its Nats-Msg-Id derives from the service and the sequence, so a second copy of the same
    message (the worker's and the advisory capture's) is dropped by the DLQ's duplicate window.
    """
    copied = {k: v for k, v in (headers or {}).items() if k != ce.NATS_MSG_ID}
    if original_id := (headers or {}).get(ce.NATS_MSG_ID):
        copied[DLQ_ORIGINAL_ID] = original_id
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
    return copied


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


def redrive_id(letter: DeadLetter) -> str:
    """The id a redrive of `letter` publishes: the same for every redrive of this dead letter."""
    return ce.derive_id("redrive", letter.original_id, letter.redrives + 1)
