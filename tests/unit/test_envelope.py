"""envelope: deterministic ids, the headers an envelope travels in, and W3C traceparent parsing."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from contracts.envelope import Envelope, derive_id, headers_for, parse_traceparent, trace_id_for, traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def envelope(**changes) -> Envelope:
    fields = dict(id="evt-1", type="tradeflow.signal.v1", source="strategy",
                  time=datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc), subject="signals_ready.GOOG",
                  trace_id=TRACE)
    return Envelope(**{**fields, **changes})


def test_derive_id_is_deterministic():
    # a redelivered input must yield the very same output ids, or the stream would not deduplicate them
    assert derive_id("risk", "in-1", 0) == derive_id("risk", "in-1", 0)
    # a known value: the ids of every output (order ids among them) must not change between versions
    assert derive_id("risk", "in-1", 0) == "77b180f9d26d1fb4f0614ea01ffbf9ec"
    assert re.fullmatch(r"[0-9a-f]{32}", derive_id("risk", "in-1", 0))


@pytest.mark.parametrize(("a", "b"), [
    pytest.param(("risk", "in-1", 0), ("quant", "in-1", 0), id="other-service"),
    pytest.param(("risk", "in-1", 0), ("risk", "in-2", 0), id="other-input"),
    pytest.param(("risk", "in-1", 0), ("risk", "in-1", 1), id="other-index"),
    # the parts are not simply glued together: "ris"+"kin-1" must not collide with "risk"+"in-1"
    pytest.param(("risk", "in-1", 0), ("ris", "kin-1", 0), id="service-input-boundary"),
    pytest.param(("risk", "in-1", 10), ("risk", "in-11", 0), id="input-index-boundary"),
])
def test_derive_id_differs_when_any_part_differs(a, b):
    assert derive_id(*a) != derive_id(*b)


def test_headers_carry_the_cloudevents_attributes():
    headers = headers_for(envelope())
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == headers["Nats-Msg-Id"] == "evt-1"
    assert headers["ce-type"] == "tradeflow.signal.v1"
    assert headers["ce-source"] == "strategy"
    assert headers["ce-time"] == "2024-01-02T14:30:00.000000Z"
    assert "ce-causationid" not in headers


def test_ce_time_is_converted_to_utc():
    paris = timezone(timedelta(hours=1))
    headers = headers_for(envelope(time=datetime(2024, 1, 2, 15, 30, tzinfo=paris)))
    assert headers["ce-time"] == "2024-01-02T14:30:00.000000Z"


def test_headers_carry_the_causation_when_there_is_one():
    assert headers_for(envelope(causation_id="bar-9"))["ce-causationid"] == "bar-9"


def test_traceparent_is_w3c_and_carries_the_trace_id():
    value = headers_for(envelope())["traceparent"]
    assert TRACEPARENT_RE.match(value), value
    assert parse_traceparent(value) == TRACE


def test_each_event_of_a_trace_gets_its_own_span():
    first, second = traceparent(TRACE, "evt-1"), traceparent(TRACE, "evt-2")
    assert first.split("-")[1] == second.split("-")[1] == TRACE
    assert first.split("-")[2] != second.split("-")[2]


def test_trace_id_for_an_untraced_event_is_stable_and_valid():
    assert trace_id_for("bar-1") == trace_id_for("bar-1") != trace_id_for("bar-2")
    assert parse_traceparent(traceparent(trace_id_for("bar-1"), "bar-1")) == trace_id_for("bar-1")


def test_parse_traceparent_accepts_upper_case_and_surrounding_space():
    assert parse_traceparent(f" 00-{TRACE.upper()}-00f067aa0ba902b7-01\n") == TRACE


@pytest.mark.parametrize("value", [
    pytest.param(None, id="absent"),
    pytest.param("", id="empty"),
    pytest.param("garbage", id="garbage"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7", id="three-parts"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7-01-extra", id="five-parts"),
    pytest.param(f"00-{TRACE[:-1]}-00f067aa0ba902b7-01", id="31-char-trace"),
    pytest.param(f"00-{TRACE}0-00f067aa0ba902b7-01", id="33-char-trace"),
    pytest.param(f"00-{'0' * 32}-00f067aa0ba902b7-01", id="all-zero-trace"),
    pytest.param(f"00-{TRACE[:-1]}g-00f067aa0ba902b7-01", id="non-hex-trace"),
    pytest.param(f"00-{TRACE[:16]}_{TRACE[17:]}-00f067aa0ba902b7-01", id="underscore-in-trace"),
    pytest.param(f"00-+{TRACE[1:]}-00f067aa0ba902b7-01", id="plus-sign-trace"),
])
def test_parse_traceparent_rejects_malformed_values(value):
    assert parse_traceparent(value) is None
