"""Encode outputs and decode inputs, strictly: one msgspec decoder per type, built once.

`decode()` turns (subject, body, headers) into an `Incoming` or raises a `BadInput`
whose message a person can read. A header-less body (what `nats pub` sends) is
accepted: its id is `Nats-Msg-Id` if given, else a hash of subject and body, and
its time is the JetStream timestamp.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from datetime import datetime, timezone

import msgspec

from contracts import envelope as ce
from contracts.envelope import Envelope
from contracts.errors import SubjectMismatch, TooLarge, Undecodable
from contracts.events import Event
from contracts.subjects import CE_TYPES, STAGES, parse_subject

MAX_BODY_BYTES = 64 * 1024
_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {stage: msgspec.json.Decoder(cls)
                                                   for stage, (cls, _) in STAGES.items()}
_ENCODER = msgspec.json.Encoder()


class Incoming(msgspec.Struct, frozen=True):
    """A decoded input: its envelope and its event, and the exact body and headers it came as."""

    envelope: Envelope
    event: Event
    body: bytes = b""
    headers: Mapping[str, str] = {}

    @property
    def id(self) -> str:
        return self.envelope.id


def encode(event: Event) -> bytes:
    """The JSON body of an event."""
    return _ENCODER.encode(event)


def ce_type_of(event: Event) -> str:
    """The ce-type of an event's class."""
    return CE_TYPES[type(event)]


def decode_body(stage: str, body: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> Event:
    """The event of a stage's body; TooLarge or Undecodable on bad input."""
    if len(body) > max_bytes:
        raise TooLarge(f"body is {len(body)} bytes, over the {max_bytes}-byte limit")
    try:
        return _DECODERS[stage].decode(body)
    except msgspec.ValidationError as exc:
        raise Undecodable(f"invalid {STAGES[stage][1]}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Undecodable(f"malformed JSON: {exc}") from None


def _header_id(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if not _ID_RE.fullmatch(value):
        raise Undecodable(f"header {name} is not a valid id (1-128 of [A-Za-z0-9._:@/+=-])")
    return value


def _header_time(headers: Mapping[str, str], fallback: datetime | None) -> datetime:
    value = headers.get(ce.CE_TIME)
    if value is None:
        return fallback or datetime.now(timezone.utc)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Undecodable(f"header {ce.CE_TIME} is not RFC 3339: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        raise Undecodable(f"header {ce.CE_TIME} has no time zone: {value[:64]!r}")
    return parsed


def decode(
    subject: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    stream_time: datetime | None = None,
    sequence: int = 0,
    attempt: int = 1,
    max_bytes: int = MAX_BODY_BYTES,
) -> Incoming:
    """Decode one message; raises a BadInput subclass with a readable reason."""
    headers = headers or {}
    stage, symbol = parse_subject(subject)
    expected_type = STAGES[stage][1]
    given_type = headers.get(ce.CE_TYPE)
    if given_type is not None and given_type != expected_type:
        raise SubjectMismatch(f"ce-type {given_type[:80]!r} does not belong on {stage} (expects {expected_type})")
    event = decode_body(stage, body, max_bytes=max_bytes)
    if event.symbol != symbol:
        raise SubjectMismatch(f"body symbol {event.symbol!r} does not match subject symbol {symbol!r}")
    stage_field = getattr(event, "stage", None)
    if stage_field is not None and subject.split(".")[1] != stage_field:
        raise SubjectMismatch(f"body stage {stage_field!r} does not match subject {subject!r}")
    event_id = _header_id(headers, ce.CE_ID) or _header_id(headers, ce.NATS_MSG_ID) or ce.content_id(subject, body)
    trace = ce.parse_traceparent(headers.get(ce.TRACEPARENT)) or ce.trace_id_for(event_id)
    env = Envelope(
        id=event_id,
        type=expected_type,
        source=(headers.get(ce.CE_SOURCE) or "external")[:128],
        time=_header_time(headers, stream_time),
        subject=subject,
        trace_id=trace,
        causation_id=_header_id(headers, ce.CE_CAUSATION),
        sequence=sequence,
        attempt=attempt,
    )
    return Incoming(env, event, body, headers)
