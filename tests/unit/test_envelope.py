"""envelope: deterministic ids, the headers an envelope travels in, and W3C traceparent parsing."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from contracts.envelope import (
    Envelope,
    TraceParent,
    derive_id,
    escape,
    headers_for,
    parse_traceparent,
    trace_id_for,
    traceparent,
    unescape,
)

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
    assert parse_traceparent(value).trace_id == TRACE


def test_each_event_of_a_trace_gets_its_own_span():
    first, second = traceparent(TRACE, "evt-1"), traceparent(TRACE, "evt-2")
    assert first.split("-")[1] == second.split("-")[1] == TRACE
    assert first.split("-")[2] != second.split("-")[2]


def test_trace_id_for_an_untraced_event_is_stable_and_valid():
    assert trace_id_for("bar-1") == trace_id_for("bar-1") != trace_id_for("bar-2")
    assert parse_traceparent(traceparent(trace_id_for("bar-1"), "bar-1")).trace_id == trace_id_for("bar-1")


def test_headers_say_the_data_is_json():
    assert headers_for(envelope())["ce-datacontenttype"] == "application/json"


# W3C Trace Context level 1, section 3.2 and its examples
def test_parse_traceparent_reads_the_specs_example():
    assert parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == TraceParent(
        version="00", trace_id="4bf92f3577b34da6a3ce929d0e0e4736", parent_id="00f067aa0ba902b7", flags="01")
    assert parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").flags == "00"  # not sampled


@pytest.mark.parametrize(("value", "parent"), [
    pytest.param(f"01-{TRACE}-00f067aa0ba902b7-01", "00f067aa0ba902b7", id="version-01"),
    pytest.param(f"cc-{TRACE}-00f067aa0ba902b7-09-what-the-future-will-be-like", "00f067aa0ba902b7",
                 id="future-version-with-more-fields"),
    pytest.param(f"fe-{TRACE}-00f067aa0ba902b7-01", "00f067aa0ba902b7", id="version-fe"),
])
def test_a_later_version_is_read_by_its_first_four_fields(value, parent):
    parsed = parse_traceparent(value)
    assert parsed is not None and parsed.trace_id == TRACE and parsed.parent_id == parent


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
    pytest.param(f"00-{TRACE.upper()}-00f067aa0ba902b7-01", id="upper-case-trace"),
    pytest.param(f"00-{TRACE}-00F067AA0BA902B7-01", id="upper-case-parent"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7-0A", id="upper-case-flags"),
    pytest.param(f"0A-{TRACE}-00f067aa0ba902b7-01", id="upper-case-version"),
    pytest.param(f"ff-{TRACE}-00f067aa0ba902b7-01", id="version-ff"),
    pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="all-zero-parent"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b-01", id="15-char-parent"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7z-01", id="17-char-parent"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7-1", id="1-char-flags"),
    pytest.param(f"0-{TRACE}-00f067aa0ba902b7-01", id="1-char-version"),
    pytest.param(f" 00-{TRACE}-00f067aa0ba902b7-01", id="leading-space"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7-01\n", id="trailing-newline"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7-01-", id="version-00-longer-than-55"),
    pytest.param(f"01-{TRACE}-00f067aa0ba902b7-01x", id="later-version-without-a-dash-after-flags"),
    pytest.param(f"01-{TRACE}-00f067aa0ba902b7", id="later-version-shorter-than-55"),
    pytest.param(f"00_{TRACE}_00f067aa0ba902b7_01", id="underscores"),
    pytest.param("x" * 10_000, id="10k-chars"),
    pytest.param(f"00-{TRACE}-00f067aa0ba902b7-01" * 200, id="repeated"),
])
def test_parse_traceparent_rejects_malformed_values(value):
    assert parse_traceparent(value) is None


# the CloudEvents NATS binding, 3.1.3.2: header values percent-encoded, and quoted strings read on input
def test_escape_encodes_what_the_binding_says_and_nothing_else():
    assert escape("Euro \u20ac \U0001F600") == "Euro%20%E2%82%AC%20%F0%9F%98%80"   # the binding's example
    assert escape('say "100%"') == "say%20%22100%25%22"
    printable = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
    assert escape(printable) == printable


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro \u20ac \U0001F600", id="binding-example"),
    pytest.param("%e2%82%ac", "\u20ac", id="lower-case-hex"),
    pytest.param("%61bc", "abc", id="needlessly-encoded"),
    pytest.param('"a b"', "a b", id="quoted"),
    pytest.param('x"a \\"q\\" \\\\ b"y', 'xa "q" \\ by', id="quoted-with-escapes"),
    pytest.param('"%41"', "A", id="quoted-then-percent-decoded"),
    pytest.param("plain", "plain", id="plain"),
])
def test_unescape_reads_header_values(value, expected):
    assert unescape(value) == expected


@pytest.mark.parametrize("value", [
    pytest.param("%C0%A0", id="overlong-utf8"),
    pytest.param("%FF", id="not-utf8"),
    pytest.param("%E2%82", id="truncated-utf8"),
    pytest.param("100%", id="bare-percent"),
    pytest.param("%zz", id="percent-not-hex"),
    pytest.param("%4", id="percent-one-digit"),
    pytest.param('"open', id="unterminated-quote"),
    pytest.param('"ends with backslash\\', id="unterminated-escape"),
])
def test_unescape_refuses_malformed_values(value):
    with pytest.raises(ValueError):
        unescape(value)


def test_escape_then_unescape_is_the_identity():
    for value in ["feed one", "a%b", 'q"', "\u00e9t\u00e9", "\U0001F600", "\x7f\x00", "plain/path:1"]:
        assert unescape(escape(value)) == value
