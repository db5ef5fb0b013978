"""codec.decode and the CloudEvents NATS binding: binary mode as the binding reads it (header names in any
case, values percent-decoded), structured mode (application/cloudevents+json), and events the official SDK
makes in both modes (its HTTP headers are the NATS headers the binding names)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from contracts.codec import MAX_BODY_BYTES, decode, encode
from contracts.envelope import Envelope, headers_for
from contracts.errors import SubjectMismatch, TooLarge, Undecodable
from contracts.events import BarReceived, SignalGenerated

SUBJECT = "data_ready.GOOG"
TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
BAR = {"symbol": "GOOG", "ts": "2024-01-02T14:30:00Z", "open": 100.0, "high": 104.0, "low": 96.0, "close": 101.0,
       "volume": 1000.0}
EVENT = BarReceived(symbol="GOOG", ts=TS, open=100.0, high=104.0, low=96.0, close=101.0, volume=1000.0)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TP = f"00-{TRACE}-00f067aa0ba902b7-01"
STRUCTURED = {"content-type": "application/cloudevents+json"}


def attributes(**changes) -> dict:
    fields = {"specversion": "1.0", "id": "bar-1", "source": "feed/one", "type": "tradeflow.market_bar.v1",
              "time": "2024-01-02T14:30:05Z", "datacontenttype": "application/json", "traceparent": TP,
              "causationid": "tick-9", "data": BAR}
    return {key: value for key, value in {**fields, **changes}.items() if value is not None}


def structured(**changes) -> bytes:
    return json.dumps(attributes(**changes)).encode()


EXPECTED = Envelope(id="bar-1", type="tradeflow.market_bar.v1", source="feed/one",
                    time=datetime(2024, 1, 2, 14, 30, 5, tzinfo=timezone.utc), subject=SUBJECT, trace_id=TRACE,
                    causation_id="tick-9")


# -- binary mode ----------------------------------------------------------------------------------------

BINARY = {"ce-specversion": "1.0", "ce-id": "bar-1", "ce-source": "feed/one", "ce-type": "tradeflow.market_bar.v1",
          "ce-time": "2024-01-02T14:30:05Z", "ce-causationid": "tick-9", "traceparent": TP}


def test_binary_mode_gives_the_envelope_and_the_event():
    inc = decode(SUBJECT, json.dumps(BAR).encode(), BINARY)
    assert inc.envelope == EXPECTED and inc.event == EVENT


@pytest.mark.parametrize("spell", [str.upper, str.title, lambda name: name[:3].upper() + name[3:]],
                         ids=["upper", "title", "prefix-upper"])
def test_binary_header_names_are_case_insensitive(spell):
    inc = decode(SUBJECT, json.dumps(BAR).encode(), {spell(name): value for name, value in BINARY.items()})
    assert inc.envelope == EXPECTED
    assert set(inc.headers) == set(BINARY)   # kept under the names tradeflow reads them by


def test_nats_msg_id_is_found_in_any_case():
    assert decode(SUBJECT, json.dumps(BAR).encode(), {"nats-msg-id": "bar-42"}).id == "bar-42"


def test_binary_values_are_percent_decoded_and_kept_encoded():
    headers = {**BINARY, "ce-source": "feed%20one%2F%E2%82%AC", "ce-type": "tradeflow%2Emarket_bar%2Ev1"}
    inc = decode(SUBJECT, json.dumps(BAR).encode(), headers)
    assert inc.envelope.source == "feed one/\u20ac" and inc.envelope.type == "tradeflow.market_bar.v1"
    assert inc.headers["ce-source"] == "feed%20one%2F%E2%82%AC"   # as sent: a header value stays printable ASCII


def test_a_quoted_binary_value_is_unquoted():
    assert decode(SUBJECT, json.dumps(BAR).encode(), {**BINARY, "ce-source": '"feed one"'}).envelope.source == \
        "feed one"


def test_sdk_style_ce_traceparent_carries_the_trace():
    headers = {name: value for name, value in BINARY.items() if name != "traceparent"} | {"ce-traceparent": TP}
    assert decode(SUBJECT, json.dumps(BAR).encode(), headers).envelope.trace_id == TRACE


def test_what_tradeflow_sends_is_read_back_exactly():
    env = Envelope(id="evt-1", type="tradeflow.market_bar.v1", source="data", time=TS, subject=SUBJECT,
                   trace_id=TRACE, causation_id="bar-0")
    headers = headers_for(env)
    inc = decode(SUBJECT, encode(EVENT), headers)
    assert inc.envelope == env and inc.headers is headers   # the fast path: nothing to put in canonical form


@pytest.mark.parametrize(("headers", "match"), [
    pytest.param({"ce-source": "a%zz"}, "header ce-source is not encoded as the CloudEvents binding says",
                 id="bad-percent"),
    pytest.param({"ce-source": "%C0%A0"}, "not UTF-8", id="overlong-utf8"),
    pytest.param({"CE-Source": '"open'}, "header ce-source .* unterminated", id="unterminated-quote"),
    pytest.param({"ce-id": "a", "CE-ID": "b"}, "header ce-id is given twice", id="two-spellings-two-values"),
    pytest.param({"Ce-Id": "bar%0A1"}, "header ce-id is not a valid id", id="encoded-newline-in-id"),
    pytest.param({"ce-specversion": "0.3"}, "ce-specversion '0.3' is not 1.0", id="specversion-0.3"),
    pytest.param({"CE-SPECVERSION": "1%2E1"}, "ce-specversion '1.1' is not 1.0", id="specversion-encoded"),
    pytest.param({"ce-datacontenttype": "text/plain"}, "ce-datacontenttype 'text/plain' is not JSON",
                 id="datacontenttype-not-json"),
    pytest.param({"Ce-Time": "yesterday"}, "ce-time", id="time-not-rfc3339"),
])
def test_hostile_binary_headers_are_undecodable(headers, match):
    with pytest.raises(Undecodable, match=match):
        decode(SUBJECT, json.dumps(BAR).encode(), headers)


def test_a_binary_type_of_another_stage_in_other_case_is_a_mismatch():
    with pytest.raises(SubjectMismatch, match="tradeflow.fill.v1"):
        decode(SUBJECT, json.dumps(BAR).encode(), {"CE-TYPE": "tradeflow.fill.v1"})


@pytest.mark.parametrize("datacontenttype", ["application/json", "application/json; charset=utf-8",
                                             "Application/JSON", "application/vnd.tradeflow+json"])
def test_a_json_datacontenttype_is_accepted(datacontenttype):
    assert decode(SUBJECT, json.dumps(BAR).encode(), {"ce-datacontenttype": datacontenttype}).event == EVENT


# -- structured mode ------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["application/cloudevents+json", "application/cloudevents+json; charset=utf-8",
                                          "Application/CloudEvents+JSON ;charset=UTF-8"])
@pytest.mark.parametrize("name", ["content-type", "Content-Type", "CONTENT-TYPE"])
def test_structured_mode_gives_what_binary_mode_gives(name, content_type):
    inc = decode(SUBJECT, structured(), {name: content_type})
    binary = decode(SUBJECT, json.dumps(BAR).encode(), BINARY)
    assert inc.envelope == binary.envelope == EXPECTED and inc.event == binary.event == EVENT
    assert json.loads(inc.body) == BAR                      # kept as binary mode carries it: the data as the body
    assert inc.headers["ce-id"] == "bar-1" and inc.headers["traceparent"] == TP and "content-type" not in inc.headers
    assert decode(SUBJECT, inc.body, inc.headers).envelope == EXPECTED   # and it decodes again (rebuild, replay)


def test_structured_attributes_are_percent_encoded_in_the_binary_form():
    inc = decode(SUBJECT, structured(source="feed one/\u20ac"), STRUCTURED)
    assert inc.envelope.source == "feed one/\u20ac" and inc.headers["ce-source"] == "feed%20one/%E2%82%AC"
    assert decode(SUBJECT, inc.body, inc.headers).envelope == inc.envelope


def test_structured_data_base64_is_the_body():
    raw = json.dumps(BAR).encode()
    inc = decode(SUBJECT, structured(data=None, data_base64=base64.b64encode(raw).decode()), STRUCTURED)
    assert inc.event == EVENT and inc.body == raw


def test_structured_without_optional_attributes_is_like_a_bare_binary_message():
    stream_time = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    inc = decode(SUBJECT, structured(time=None, traceparent=None, causationid=None, datacontenttype=None),
                 STRUCTURED, stream_time=stream_time)
    assert inc.envelope.time == stream_time and inc.envelope.causation_id is None and inc.event == EVENT
    assert len(inc.envelope.trace_id) == 32


def test_structured_other_headers_are_kept_and_ce_headers_are_not():
    headers = {**STRUCTURED, "Nats-Msg-Id": "bar-1", "tradeflow-replay-run": "r1", "ce-id": "stale", "CE-Type": "x"}
    inc = decode(SUBJECT, structured(), headers)
    assert inc.envelope == EXPECTED
    assert inc.headers["Nats-Msg-Id"] == "bar-1" and inc.headers["tradeflow-replay-run"] == "r1"


def test_structured_unknown_extensions_are_ignored():
    assert decode(SUBJECT, structured(comexampleextension1="value", partitionkey=7), STRUCTURED).envelope == EXPECTED


def test_a_malformed_structured_traceparent_starts_a_new_trace():
    inc = decode(SUBJECT, structured(traceparent=TP.upper()), STRUCTURED)
    assert inc.envelope.trace_id != TRACE and len(inc.envelope.trace_id) == 32


DEEP = b'{"specversion":"1.0","id":"x","source":"s","type":"t","data":' + b"[" * 30_000 + b"]" * 30_000 + b"}"


@pytest.mark.parametrize(("raw", "error", "match"), [
    pytest.param(b"not json", Undecodable, "malformed JSON", id="not-json"),
    pytest.param(structured()[:-5], Undecodable, "malformed JSON", id="truncated"),
    pytest.param(b"[1, 2]", Undecodable, "invalid CloudEvent: Expected `object`, got `array`", id="array"),
    pytest.param(b'"a string"', Undecodable, "invalid CloudEvent", id="string"),
    pytest.param(structured(id=None), Undecodable, "invalid CloudEvent: Object missing required field `id`",
                 id="missing-id"),
    pytest.param(structured(source=None), Undecodable, "missing required field `source`", id="missing-source"),
    pytest.param(structured(type=None), Undecodable, "missing required field `type`", id="missing-type"),
    pytest.param(structured(specversion=None), Undecodable, "missing required field `specversion`",
                 id="missing-specversion"),
    pytest.param(structured(specversion="0.3"), Undecodable, "specversion '0.3' is not 1.0", id="specversion-0.3"),
    pytest.param(structured(id=7), Undecodable, r"Expected `str`, got `int` - at `\$.id`", id="numeric-id"),
    pytest.param(structured(id=""), Undecodable, "header ce-id is not a valid id", id="empty-id"),
    pytest.param(structured(id="a\nb"), Undecodable, "header ce-id is not a valid id", id="newline-in-id"),
    pytest.param(structured(id="x" * 129), Undecodable, "header ce-id is not a valid id", id="129-char-id"),
    pytest.param(structured(causationid="a b"), Undecodable, "header ce-causationid is not a valid id",
                 id="bad-causation"),
    pytest.param(structured(time="yesterday"), Undecodable, "ce-time", id="time-not-rfc3339"),
    pytest.param(structured(time="2024-01-02T14:30:00"), Undecodable, "no time zone", id="naive-time"),
    pytest.param(structured(datacontenttype="text/xml"), Undecodable, "ce-datacontenttype 'text/xml' is not JSON",
                 id="data-not-json"),
    pytest.param(structured(data=None), Undecodable, "carries no data", id="no-data"),
    pytest.param(structured(data_base64="e30="), Undecodable, "both data and data_base64", id="both-data"),
    pytest.param(structured(data=None, data_base64="not base64!"), Undecodable, "data_base64 is not base64",
                 id="data-base64-not-base64"),
    pytest.param(structured(data=None, data_base64=base64.b64encode(b"{nope").decode()), Undecodable,
                 "malformed JSON", id="data-base64-not-json"),
    pytest.param(structured(data={**BAR, "close": "high"}), Undecodable, r"invalid tradeflow.market_bar.v1: .*\$.close",
                 id="data-off-schema"),
    pytest.param(structured(data={**BAR, "colour": "red"}), Undecodable, "unknown field `colour`", id="data-extra"),
    pytest.param(structured(data=json.dumps(BAR)), Undecodable, "Expected `object`, got `str`", id="data-as-string"),
    pytest.param(structured(data=None, data_base64=None) + b" " * 10, Undecodable, "carries no data", id="empty"),
    pytest.param(DEEP, Undecodable, "nested too deeply", id="deeply-nested-data"),
    pytest.param(structured(type="tradeflow.fill.v1"), SubjectMismatch, "does not belong on data_ready",
                 id="type-of-another-stage"),
    pytest.param(structured(data={**BAR, "symbol": "MSFT"}), SubjectMismatch, "'MSFT' does not match", id="symbol"),
])
def test_bad_structured_input_is_refused_with_a_reason(raw, error, match):
    with pytest.raises(error, match=match):
        decode(SUBJECT, raw, STRUCTURED)


def test_an_oversized_structured_event_is_too_large_before_parsing():
    raw = structured()[:-1] + b" " * MAX_BODY_BYTES + b"}"
    with pytest.raises(TooLarge, match="over the 65536-byte limit"):
        decode(SUBJECT, raw, STRUCTURED)
    exact = structured()
    assert decode(SUBJECT, exact, STRUCTURED, max_bytes=len(exact)).event == EVENT
    with pytest.raises(TooLarge):
        decode(SUBJECT, exact, STRUCTURED, max_bytes=len(exact) - 1)


@pytest.mark.parametrize("content_type", ["application/cloudevents-batch+json", "application/cloudevents+avro",
                                          "application/cloudevents"])
def test_another_cloudevents_format_is_undecodable(content_type):
    with pytest.raises(Undecodable, match="is not read here"):
        decode(SUBJECT, structured(), {"content-type": content_type})


def test_a_plain_json_content_type_is_binary_mode():
    assert decode(SUBJECT, json.dumps(BAR).encode(), {"Content-Type": "application/json"}).event == EVENT


# -- the official SDK -----------------------------------------------------------------------------------

def sdk_event(data: dict, **extra) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": "sdk-1", "source": "https://example.com/feed one",
                       "type": "tradeflow.market_bar.v1", "time": datetime(2024, 1, 2, 14, 30, 5, tzinfo=timezone.utc),
                       "datacontenttype": "application/json", **extra}, data)


@pytest.mark.parametrize("mode", [to_structured_event, to_binary_event], ids=["structured", "binary"])
def test_events_the_sdk_makes_are_decoded(mode):
    message = mode(sdk_event(BAR, traceparent=TP, causationid="tick-9"))
    inc = decode(SUBJECT, message.body, dict(message.headers))
    assert inc.event == EVENT
    assert inc.envelope == Envelope(id="sdk-1", type="tradeflow.market_bar.v1", source="https://example.com/feed one",
                                    time=datetime(2024, 1, 2, 14, 30, 5, tzinfo=timezone.utc), subject=SUBJECT,
                                    trace_id=TRACE, causation_id="tick-9")


def test_sdk_base64_data_is_decoded():
    signal = {"symbol": "GOOG", "ts": "2024-01-02T14:30:00Z", "side": "buy", "strength": 0.5, "price": 101.0,
              "strategy": "sma_cross"}
    event = CloudEvent({"specversion": "1.0", "id": "sdk-2", "source": "s", "type": "tradeflow.signal.v1",
                        "datacontenttype": "application/json"}, json.dumps(signal).encode())
    message = to_structured_event(event)
    assert b"data_base64" in message.body
    inc = decode("signals_ready.GOOG", message.body, dict(message.headers))
    assert isinstance(inc.event, SignalGenerated) and inc.event.strength == 0.5 and inc.id == "sdk-2"
