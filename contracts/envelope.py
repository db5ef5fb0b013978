"""The CloudEvents envelope carried in NATS headers, deterministic ids, and W3C trace context.

Binary mode of the CloudEvents NATS binding: the body is the event, headers carry
`ce-specversion`, `ce-id`, `ce-type`, `ce-source`, `ce-time`, `ce-datacontenttype`, plus
`Nats-Msg-Id` (= ce-id, for JetStream's duplicate window), W3C `traceparent` (one trace per
bar's journey) and `ce-causationid` (the ce-id of the event that caused this one). On input,
header names are case-insensitive and `ce-*` values are unquoted and percent-decoded
(`unescape`), as the binding says.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

import msgspec

CE_SPECVERSION = "ce-specversion"
CE_ID = "ce-id"
CE_TYPE = "ce-type"
CE_SOURCE = "ce-source"
CE_TIME = "ce-time"
CE_CAUSATION = "ce-causationid"
CE_DATACONTENTTYPE = "ce-datacontenttype"
CE_TRACEPARENT = "ce-traceparent"     # the distributed-tracing extension in binary mode (SDKs send it)
DATACONTENTTYPE = "application/json"
NATS_MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"
CONTENT_TYPE = "content-type"
STRUCTURED = "application/cloudevents+json"   # a content-type that says the body is the whole event
REPLAY_RUN = "tradeflow-replay-run"   # on a replayed event and everything the pipeline makes of it
REPLAY_OF = "tradeflow-replay-of"     # on a replayed event: the id of the recorded original
# W3C Trace Context level 1: lower-case hex only, not version ff, no all-zero trace or parent id; a later
# version may add fields after a dash
_TRACEPARENT = re.compile(r"(?!ff)([0-9a-f]{2})-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})(?=-|\Z)")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# printable ASCII but space, '"' and '%': what a header value carries as it is (quote() keeps [A-Za-z0-9_.~-])
_HEADER_SAFE = "!#$&'()*+,/:;<=>?@[\\]^`{|}"


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


class TraceParent(NamedTuple):
    """The four fields of a W3C traceparent, lower-case hex."""

    version: str
    trace_id: str
    parent_id: str
    flags: str


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The fields of a W3C traceparent (Trace Context level 1), or None if it is absent or malformed: not
    lower-case hex, version ff, an all-zero trace or parent id, version 00 not exactly 55 characters (a
    later version may be longer: its first four fields are read). A None starts a new trace."""
    if not value:
        return None
    match = _TRACEPARENT.match(value)
    if match is None or (len(value) != 55 and value.startswith("00")):
        return None
    return TraceParent._make(match.groups())


def escape(value: str) -> str:
    """A header value as the binding sends it: space, '"', '%' and all but printable ASCII percent-encoded."""
    return quote(value, safe=_HEADER_SAFE)


def _unquote(value: str) -> str:
    """RFC 7230 quoted strings (with backslash escapes) unwrapped; ValueError if one is left open."""
    out: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            out.append(char)
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        else:
            out.append(char)
    if quoted or escaped:
        raise ValueError("an unterminated quoted string")
    return "".join(out)


def unescape(value: str) -> str:
    """A `ce-*` header value as the binding reads it: quoted strings unwrapped, then one round of
    percent-decoding into strict UTF-8; ValueError if either is malformed."""
    if '"' in value:
        value = _unquote(value)
    if "%" not in value:
        return value
    if _BAD_PERCENT.search(value):
        raise ValueError("a '%' not followed by two hex digits")
    try:
        return unquote_to_bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("percent-encoded bytes that are not UTF-8") from None


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
        CE_DATACONTENTTYPE: DATACONTENTTYPE,
        NATS_MSG_ID: env.id,
        TRACEPARENT: traceparent(env.trace_id, env.id),
    }
    if env.causation_id:
        headers[CE_CAUSATION] = env.causation_id
    return headers


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header's value whatever the case of its name (NATS header names are case-insensitive, as HTTP's):
    the exact spelling first, the fast path."""
    value = headers.get(name)
    if value is None:
        low = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == low), None)
    return value
