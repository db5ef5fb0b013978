"""Encode outputs and decode inputs, strictly: one msgspec decoder per type, built once.

`decode()` turns (subject, body, headers) into an `Incoming` or raises a `BadInput`
whose message a person can read. A header-less body (what `nats pub` sends) is
accepted: its id is `Nats-Msg-Id` if given, else a hash of subject and body, and
its time is the JetStream timestamp. Both content modes of the CloudEvents NATS
binding are read: binary (header names in any case, `ce-*` values percent-decoded)
and structured (`content-type: application/cloudevents+json`, contracts/structured.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from datetime import datetime, timezone

import msgspec

from contracts import envelope as ce
from contracts import structured
from contracts.envelope import Envelope
from contracts.errors import SubjectMismatch, TooLarge, Undecodable
from contracts.events import Event
from contracts.subjects import CE_TYPES, STAGES, parse_subject

MAX_BODY_BYTES = 64 * 1024
_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {stage: msgspec.json.Decoder(cls)
                                                   for stage, (cls, _) in STAGES.items()}
_ENCODER = msgspec.json.Encoder()
# The header names tradeflow sends, as it spells them: a message that has no other and no value quoted or
# percent-encoded is read as it came (the fast path); any other is put in canonical form first.
_EXACT = frozenset({ce.CE_SPECVERSION, ce.CE_ID, ce.CE_TYPE, ce.CE_SOURCE, ce.CE_TIME, ce.CE_CAUSATION,
                    ce.CE_DATACONTENTTYPE, ce.NATS_MSG_ID, ce.TRACEPARENT, ce.REPLAY_RUN, ce.REPLAY_OF})
_CANONICAL = {name.lower(): name for name in (ce.NATS_MSG_ID, ce.TRACEPARENT, "tracestate", ce.CONTENT_TYPE,
                                              ce.REPLAY_RUN, ce.REPLAY_OF)}


class Incoming(msgspec.Struct, frozen=True):
    """A decoded input: its envelope and its event, and the body and headers it came as (in binary mode:
    a structured-mode event is kept as binary mode would have carried it)."""

    envelope: Envelope
    event: Event
    body: bytes = b""
    headers: Mapping[str, str] = {}   # binary mode's headers: names in canonical case, values as sent

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
    except RecursionError:
        raise Undecodable("malformed JSON: nested too deeply") from None


def _is_json(media_type: str) -> bool:
    media = media_type.partition(";")[0].strip().lower()
    return media == ce.DATACONTENTTYPE or media.endswith("+json")


def _canonical(headers: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """(headers with names in canonical case, the same with `ce-*` values unescaped); Undecodable if a name
    comes twice with two values or a value is not encoded as the binding says."""
    wire: dict[str, str] = {}
    read: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        attribute = low.startswith("ce-")
        key = low if attribute else _CANONICAL.get(low, name)
        if wire.setdefault(key, value) != value:
            raise Undecodable(f"header {key} is given twice, with different values")
        if attribute:
            try:
                value = ce.unescape(value)
            except ValueError as exc:
                raise Undecodable(f"header {key} is not encoded as the CloudEvents binding says: {exc}") from None
        read[key] = value
    return wire, read


def _binary_mode(body: bytes, headers: Mapping[str, str],
                 max_bytes: int) -> tuple[bytes, Mapping[str, str], Mapping[str, str]]:
    """(body, headers as sent, headers to read) of binary mode, for a message not in tradeflow's own form."""
    wire, read = _canonical(headers)
    content_type = read.get(ce.CONTENT_TYPE)
    if content_type is None or not structured.is_structured(content_type):
        return body, wire, read
    if len(body) > max_bytes:
        raise TooLarge(f"body is {len(body)} bytes, over the {max_bytes}-byte limit")
    data, read = structured.to_binary(body, read)
    return data, {name: ce.escape(value) if name.startswith("ce-") else value for name, value in read.items()}, read


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
    stage, symbol = parse_subject(subject)
    headers = headers or {}
    if _EXACT.issuperset(headers) and "%" not in (values := "".join(headers.values())) and '"' not in values:
        read = headers   # tradeflow's own form (the fast path): nothing to put in canonical form
    else:
        body, headers, read = _binary_mode(body, headers, max_bytes)
    expected_type = STAGES[stage][1]
    given_type = read.get(ce.CE_TYPE)
    if given_type is not None and given_type != expected_type:
        raise SubjectMismatch(f"ce-type {given_type[:80]!r} does not belong on {stage} (expects {expected_type})")
    version, content_type = read.get(ce.CE_SPECVERSION), read.get(ce.CE_DATACONTENTTYPE)
    if version is not None and version != "1.0":
        raise Undecodable(f"header {ce.CE_SPECVERSION} {version[:16]!r} is not 1.0")
    if content_type is not None and content_type != ce.DATACONTENTTYPE and not _is_json(content_type):
        raise Undecodable(f"{ce.CE_DATACONTENTTYPE} {content_type[:80]!r} is not JSON")
    event = decode_body(stage, body, max_bytes=max_bytes)
    if event.symbol != symbol:
        raise SubjectMismatch(f"body symbol {event.symbol!r} does not match subject symbol {symbol!r}")
    stage_field = getattr(event, "stage", None)
    if stage_field is not None and subject.split(".")[1] != stage_field:
        raise SubjectMismatch(f"body stage {stage_field!r} does not match subject {subject!r}")
    event_id = _header_id(read, ce.CE_ID) or _header_id(read, ce.NATS_MSG_ID) or ce.content_id(subject, body)
    trace = ce.parse_traceparent(read.get(ce.TRACEPARENT) or read.get(ce.CE_TRACEPARENT))
    env = Envelope(
        id=event_id,
        type=expected_type,
        source=(read.get(ce.CE_SOURCE) or "external")[:128],
        time=_header_time(read, stream_time),
        subject=subject,
        trace_id=trace.trace_id if trace else ce.trace_id_for(event_id),
        causation_id=_header_id(read, ce.CE_CAUSATION),
        sequence=sequence,
        attempt=attempt,
    )
    return Incoming(env, event, body, headers)
