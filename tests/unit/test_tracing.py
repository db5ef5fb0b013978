"""The span an event's traceparent names, and the switch that keeps OpenTelemetry off unless an endpoint is
configured (traceparent parsing itself: tests/unit/test_envelope.py)."""

from __future__ import annotations

from contracts import envelope as ce
from services.runtime.tracing import Tracing


def test_an_events_traceparent_names_its_span():
    tp = ce.traceparent("0af7651916cd43dd8448eb211c80319c", "evt-1")
    assert ce.parse_traceparent(tp).parent_id == ce.span_id("evt-1") and len(ce.span_id("evt-1")) == 16


def test_tracing_is_off_without_an_endpoint_and_on_with_one():
    assert Tracing.from_env("strategy", "0.1.0", {}) is None
    assert Tracing.from_env("strategy", "0.1.0", {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None
    tracing = Tracing.from_env("strategy", "0.1.0", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"})
    assert tracing is not None
    tracing.provider.shutdown()
