"""Trace context parsing and the switch that keeps OpenTelemetry off unless an endpoint is configured."""

from __future__ import annotations

import pytest

from contracts import envelope as ce
from services.runtime.tracing import Tracing, span_id_of


def test_an_events_traceparent_names_its_span():
    tp = ce.traceparent("0af7651916cd43dd8448eb211c80319c", "evt-1")
    assert span_id_of(tp) == ce.span_id("evt-1") and len(ce.span_id("evt-1")) == 16


@pytest.mark.parametrize("value", [None, "", "garbage", "00-abc-def-01", "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
                                   "00-" + "a" * 32 + "-" + "zz" * 8 + "-01", "00-" + "a" * 32 + "-" + "a" * 17 + "-01",
                                   "x" * 10_000])
def test_a_malformed_traceparent_has_no_parent(value):
    assert span_id_of(value) is None


def test_tracing_is_off_without_an_endpoint_and_on_with_one():
    assert Tracing.from_env("strategy", "0.1.0", {}) is None
    assert Tracing.from_env("strategy", "0.1.0", {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None
    tracing = Tracing.from_env("strategy", "0.1.0", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"})
    assert tracing is not None
    tracing.provider.shutdown()
