"""The CloudEvents-style envelope carried in NATS headers, and deterministic ids.

Binary mode of the CloudEvents NATS binding: the body is the event, headers carry
`ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-time`, plus `Nats-Msg-Id`
(= ce-id, for JetStream's duplicate window), W3C `traceparent` (one trace per
bar's journey) and `ce-causationid` (the ce-id of the event that caused this one).
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

import msgspec

CE_SPECVERSION = "ce-specversion"
CE_ID = "ce-id"
CE_TYPE = "ce-type"
CE_SOURCE = "ce-source"
CE_TIME = "ce-time"
CE_CAUSATION = "ce-causationid"
NATS_MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"
REPLAY_RUN = "tradeflow-replay-run"   # on a replayed event and everything the pipeline makes of it
REPLAY_OF = "tradeflow-replay-of"     # on a replayed event: the id of the recorded original
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-fA-F]{32})-[0-9a-fA-F]{16}-[0-9a-f]{2}")


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """Who made an event, when, why, and in which trace."""

    id: str
    type: str
    source: str
    time: datetime
    subject: str
    trace_id: str
    causation_id: str | None = None
    sequence: int = 0  # JetStream stream sequence, when it came from a stream
    attempt: int = 1   # JetStream delivery count


def _hash(*parts: str | bytes, size: int) -> str:
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


def derive_id(service: str, input_id: str, index: int) -> str:
    """Output id from (service, input id, output index): a redelivered input yields the same ids."""
    return _hash(service, input_id, str(index), size=16)


def content_id(subject: str, body: bytes) -> str:
    """Id of a header-less message: a hash of its subject and body."""
    return _hash(subject, body, size=16)


def trace_id_for(event_id: str) -> str:
    """The trace a journey starts when its first event carries none: derived from the id."""
    return _hash("trace", event_id, size=16)


def span_id(event_id: str) -> str:
    """The span (16 hex) named after an event id: the one its traceparent carries."""
    return _hash("span", event_id, size=8)


def traceparent(trace_id: str, span_of: str) -> str:
    """A W3C traceparent for a span named after an event id."""
    return f"00-{trace_id}-{span_id(span_of)}-01"


def parse_traceparent(value: str | None) -> str | None:
    """The trace id of a W3C traceparent header, or None if it is absent or malformed."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if not match or match.group(1) == "0" * 32:
        return None
    return match.group(1).lower()


def rfc3339(ts: datetime) -> str:
    """UTC RFC 3339 with microseconds and a Z."""
    return ts.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def headers_for(env: Envelope) -> dict[str, str]:
    """The NATS headers that carry an envelope."""
    headers = {
        CE_SPECVERSION: "1.0",
        CE_ID: env.id,
        CE_TYPE: env.type,
        CE_SOURCE: env.source,
        CE_TIME: rfc3339(env.time),
        NATS_MSG_ID: env.id,
        TRACEPARENT: traceparent(env.trace_id, env.id),
    }
    if env.causation_id:
        headers[CE_CAUSATION] = env.causation_id
    return headers
