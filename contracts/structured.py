"""Structured mode of the CloudEvents NATS binding, on input: the body is the whole event, in the JSON format.

`to_binary()` turns such a body into what binary mode carries for the same event: the data's bytes as the
body and the attributes as `ce-*` headers (the tracing extension as `traceparent`), so that the codec reads
both modes one way and an event is recorded, replayed and traced alike whichever mode it came in.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

import msgspec

from contracts import envelope as ce
from contracts.errors import Undecodable


class StructuredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """The attributes tradeflow reads of a CloudEvent in the JSON format (other extensions are ignored)."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str | None = None
    time: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: msgspec.Raw = msgspec.Raw()   # the JSON value's bytes, unparsed: the stage's decoder reads them
    data_base64: str | None = None
    traceparent: str | None = None       # the distributed-tracing extension
    tracestate: str | None = None
    causationid: str | None = None       # tradeflow's: the id of the event that caused this one


_DECODER = msgspec.json.Decoder(StructuredEvent)
_ATTRIBUTES = (("id", ce.CE_ID), ("source", ce.CE_SOURCE), ("type", ce.CE_TYPE), ("time", ce.CE_TIME),
               ("datacontenttype", ce.CE_DATACONTENTTYPE), ("causationid", ce.CE_CAUSATION),
               ("traceparent", ce.TRACEPARENT), ("tracestate", "tracestate"))


def is_structured(content_type: str) -> bool:
    """Whether a content-type header says structured mode (application/cloudevents+json, any case, any
    parameters); Undecodable for another CloudEvents format (batches, other encodings) tradeflow does not read."""
    media = content_type.partition(";")[0].strip().lower()
    if media == ce.STRUCTURED:
        return True
    if media.startswith("application/cloudevents"):
        raise Undecodable(f"content-type {media[:80]!r} is not read here (structured mode is {ce.STRUCTURED})")
    return False


def _parse(body: bytes) -> StructuredEvent:
    try:
        event = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise Undecodable(f"invalid CloudEvent: {exc}") from None
    except msgspec.DecodeError as exc:
        raise Undecodable(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise Undecodable("malformed JSON: nested too deeply") from None
    if event.specversion != "1.0":
        raise Undecodable(f"CloudEvent specversion {event.specversion[:16]!r} is not 1.0")
    return event


def _data(event: StructuredEvent) -> bytes:
    if event.data_base64 is None:
        if not event.data:
            raise Undecodable("the CloudEvent carries no data (neither data nor data_base64)")
        return bytes(event.data)
    if event.data:
        raise Undecodable("the CloudEvent carries both data and data_base64")
    try:
        return base64.b64decode(event.data_base64, validate=True)
    except (binascii.Error, ValueError):
        raise Undecodable("the CloudEvent's data_base64 is not base64") from None


def to_binary(body: bytes, headers: Mapping[str, str]) -> tuple[bytes, dict[str, str]]:
    """(data, attribute values by binary-mode header name) of a structured-mode body; the message's other
    headers (`Nats-Msg-Id`, ...) are kept, its `ce-*` and content-type are not. Undecodable on bad input."""
    event = _parse(body)
    data = _data(event)
    out = {name: value for name, value in headers.items()
           if not name.startswith("ce-") and name != ce.CONTENT_TYPE}
    out[ce.CE_SPECVERSION] = event.specversion
    for attribute, header in _ATTRIBUTES:
        value = getattr(event, attribute)
        if value is not None:
            out[header] = value
    return data, out
