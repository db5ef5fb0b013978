"""codec.decode / encode: what a message on the wire turns into, and how bad input is refused."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from contracts.codec import MAX_BODY_BYTES, decode, encode
from contracts.envelope import Envelope, content_id, headers_for
from contracts.errors import SubjectMismatch, TooLarge, Undecodable, UnknownSubject
from contracts.events import (
    BarReceived,
    OrderApproved,
    OrderFilled,
    SignalGenerated,
    SignalRejected,
    SignalValidated,
)
from contracts.subjects import CE_TYPES, subject_for

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
BAR = {"symbol": "GOOG", "ts": "2024-01-02T14:30:00Z", "open": 100.0, "high": 104.0, "low": 96.0, "close": 101.0,
       "volume": 1000.0}
ORDER = {"symbol": "GOOG", "ts": "2024-01-02T14:30:00Z", "order_id": "o-1", "side": "buy", "quantity": 10.0,
         "price": 101.0}


def body(base: dict, **changes) -> bytes:
    return json.dumps({**base, **changes}).encode()


def test_headerless_bar_decodes_with_a_content_hash_id():
    raw = body(BAR)
    first = decode("data_ready.GOOG", raw)
    again = decode("data_ready.GOOG", raw)
    assert first.event == BarReceived(symbol="GOOG", ts=TS, open=100.0, high=104.0, low=96.0, close=101.0,
                                      volume=1000.0)
    assert first.id == again.id  # a re-sent identical message has the same id, so it is deduplicated
    assert first.envelope.type == "tradeflow.market_bar.v1"
    assert first.envelope.source == "external"
    assert decode("data_ready.GOOG", body(BAR, close=102.0)).id != first.id


def test_headerless_id_depends_on_the_subject_too():
    # the same bytes on two subjects are two events (e.g. `nats pub` of one body to two stages)
    raw = body(BAR)
    assert content_id("data_ready.GOOG", raw) != content_id("signals_ready.GOOG", raw)
    assert decode("data_ready.GOOG", raw).id == content_id("data_ready.GOOG", raw)


def test_rejection_whose_stage_contradicts_its_subject_is_a_mismatch():
    raw = body({"symbol": "GOOG", "ts": BAR["ts"], "stage": "quant", "rule": "r", "reason": "", "side": "buy"})
    assert decode("rejected.quant.GOOG", raw).event.stage == "quant"
    with pytest.raises(SubjectMismatch, match="body stage 'quant' does not match"):
        decode("rejected.risk.GOOG", raw)


def test_nats_msg_id_header_becomes_the_id():
    assert decode("data_ready.GOOG", body(BAR), {"Nats-Msg-Id": "bar-42"}).id == "bar-42"


def test_ce_id_wins_over_nats_msg_id():
    assert decode("data_ready.GOOG", body(BAR), {"ce-id": "ce-7", "Nats-Msg-Id": "bar-42"}).id == "ce-7"


def test_headerless_time_is_the_stream_time():
    stream_time = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    assert decode("data_ready.GOOG", body(BAR), stream_time=stream_time).envelope.time == stream_time


@pytest.mark.parametrize(("raw", "match"), [
    pytest.param(b'{"symbol": "GOOG",', "malformed JSON", id="truncated-json"),
    pytest.param(b"not json", "malformed JSON", id="not-json"),
    pytest.param(body(BAR, open="100"), r"Expected `float`, got `str` - at `\$.open`", id="string-price"),
    pytest.param(body(BAR, colour="red"), "unknown field `colour`", id="unknown-field"),
    pytest.param(body(BAR).replace(b"104.0", b"1e999"), r"\$.high", id="inf-high-1e999"),
    pytest.param(body(BAR, volume=12345.0).replace(b"12345.0", b"1e999"), r"\$.volume", id="inf-volume-1e999"),
    pytest.param(body(BAR, low=-1.0), r"> 0.0 - at `\$.low`", id="negative-price"),
    pytest.param(body(BAR, open=0), r"> 0.0 - at `\$.open`", id="zero-price"),
    pytest.param(body(BAR, volume=-5), r"\$.volume", id="negative-volume"),
    pytest.param(body(BAR, high=95.0, open=95.5, close=95.5, low=96.0), "high 95.0 is below low 96.0",
                 id="high-below-low"),
    pytest.param(body(BAR, open=105.0), r"open 105.0 is outside \[low 96.0, high 104.0\]", id="open-above-high"),
    pytest.param(body(BAR, close=95.0), r"close 95.0 is outside", id="close-below-low"),
    pytest.param(body(BAR, ts="2024-01-02T14:30:00"), "timezone", id="naive-timestamp"),
    pytest.param(body(BAR, symbol="goog"), r"\$.symbol", id="lowercase-body-symbol"),
    pytest.param(body(BAR, symbol="GO OG"), r"\$.symbol", id="space-in-body-symbol"),
    pytest.param(body({k: v for k, v in BAR.items() if k != "close"}), "missing required field `close`",
                 id="missing-field"),
])
def test_bad_bar_body_is_undecodable_with_a_reason(raw, match):
    with pytest.raises(Undecodable, match=match):
        decode("data_ready.GOOG", raw)


@pytest.mark.parametrize("quantity", [pytest.param(0, id="zero"), pytest.param(-10, id="negative")])
def test_order_without_a_positive_quantity_is_undecodable(quantity):
    with pytest.raises(Undecodable, match=r"\$.quantity"):
        decode("approved_ready.GOOG", body(ORDER, quantity=quantity))


def test_body_symbol_must_match_subject_symbol():
    with pytest.raises(SubjectMismatch, match="'MSFT' does not match subject symbol 'GOOG'"):
        decode("data_ready.GOOG", body(BAR, symbol="MSFT"))


def test_ce_type_of_another_stage_is_a_mismatch():
    with pytest.raises(SubjectMismatch, match="tradeflow.fill.v1"):
        decode("data_ready.GOOG", body(BAR), {"ce-type": "tradeflow.fill.v1"})


def test_body_over_max_bytes_is_too_large():
    raw = body(BAR)
    assert decode("data_ready.GOOG", raw, max_bytes=len(raw)).event.symbol == "GOOG"  # exactly at the limit
    with pytest.raises(TooLarge, match=f"{len(raw)} bytes, over the {len(raw) - 1}-byte limit"):
        decode("data_ready.GOOG", raw, max_bytes=len(raw) - 1)


def test_default_limit_refuses_a_padded_body_before_parsing_it():
    raw = body(BAR)[:-1] + b" " * MAX_BODY_BYTES + b"}"
    with pytest.raises(TooLarge):
        decode("data_ready.GOOG", raw)


@pytest.mark.parametrize("subject", [
    pytest.param("prices.GOOG", id="unknown-prefix"),
    pytest.param("data_ready.goog", id="lowercase-symbol"),
    pytest.param("data_ready.", id="no-symbol"),
    pytest.param("data_ready", id="prefix-only"),
    pytest.param("rejected.GOOG", id="rejected-without-stage"),
    pytest.param("dlq.strategy.data_ready.GOOG", id="dlq-subject"),
])
def test_subject_no_stage_owns_is_unknown(subject):
    with pytest.raises(UnknownSubject, match="subject"):
        decode(subject, body(BAR))


@pytest.mark.parametrize("value", [
    pytest.param("abc\ndef", id="inner-newline"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("", id="empty"),
    pytest.param("id with spaces", id="spaces"),
    pytest.param("abc\n", id="trailing-newline"),
])
@pytest.mark.parametrize("header", ["ce-id", "Nats-Msg-Id", "ce-causationid"])
def test_hostile_id_header_is_undecodable(header, value):
    with pytest.raises(Undecodable, match=f"header {header} is not a valid id"):
        decode("data_ready.GOOG", body(BAR), {header: value})


def test_128_char_id_is_accepted():
    assert decode("data_ready.GOOG", body(BAR), {"ce-id": "a" * 128}).id == "a" * 128


@pytest.mark.parametrize("value", [pytest.param("yesterday", id="not-a-date"),
                                   pytest.param("2024-01-02T14:30:00", id="naive")])
def test_bad_ce_time_header_is_undecodable(value):
    with pytest.raises(Undecodable, match="ce-time"):
        decode("data_ready.GOOG", body(BAR), {"ce-time": value})


EVENTS = [
    BarReceived(symbol="GOOG", ts=TS, open=100.0, high=104.5, low=96.25, close=101.0, volume=12.0),
    SignalGenerated(symbol="GOOG", ts=TS, side="buy", strength=0.75, price=101.0, strategy="sma_cross",
                    params={"fast": 2.0, "slow": 3.0}, features={"sma_fast": 9.5, "sma_slow": 9.0}),
    SignalValidated(symbol="BRK.B", ts=TS, side="sell", strength=1.0, price=350.5, strategy="sma_cross"),
    OrderApproved(symbol="GOOG", ts=TS, order_id="o-1", side="sell", quantity=20.0, price=101.0, strategy="s"),
    OrderFilled(symbol="GOOG", ts=TS, order_id="o-1", side="buy", quantity=0.5, price=101.25, commission=1.5),
    SignalRejected(symbol="EUR-USD", ts=TS, stage="risk", rule="max_position", reason="too big", side="buy"),
]


def test_round_trip_covers_every_event_type():
    assert {type(e) for e in EVENTS} == set(CE_TYPES)


@pytest.mark.parametrize("event", [pytest.param(e, id=type(e).__name__) for e in EVENTS])
def test_encode_then_decode_gives_the_same_event(event):
    assert decode(subject_for(event), encode(event)).event == event


@pytest.mark.parametrize("event", [pytest.param(e, id=type(e).__name__) for e in EVENTS])
def test_envelope_survives_its_headers(event):
    subject = subject_for(event)
    env = Envelope(id="evt-1", type=CE_TYPES[type(event)], source="strategy",
                   time=datetime(2024, 1, 2, 14, 30, 0, 123456, tzinfo=timezone.utc), subject=subject,
                   trace_id="0af7651916cd43dd8448eb211c80319c", causation_id="bar-1")
    assert decode(subject, encode(event), headers_for(env)).envelope == env
