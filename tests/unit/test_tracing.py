"""The span an event's traceparent names, and the switch that keeps OpenTelemetry off unless an endpoint is
configured (traceparent parsing itself: tests/unit/test_envelope.py)."""

from __future__ import annotations

import pytest

from contracts import envelope as ce
from services.runtime.tracing import Tracing, destination_template, span_name


def test_an_events_traceparent_names_its_span():
    tp = ce.traceparent("0af7651916cd43dd8448eb211c80319c", "evt-1")
    assert ce.parse_traceparent(tp).parent_id == ce.span_id("evt-1") and len(ce.span_id("evt-1")) == 16


def test_tracing_is_off_without_an_endpoint_and_on_with_one():
    assert Tracing.from_env("strategy", "0.1.0", {}) is None
    assert Tracing.from_env("strategy", "0.1.0", {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}) is None
    tracing = Tracing.from_env("strategy", "0.1.0", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"})
    assert tracing is not None
    tracing.provider.shutdown()


@pytest.mark.parametrize(("subject", "template"), [
    ("signals_ready.AAPL", "signals_ready.{symbol}"),
    ("validated_ready.BRK.B", "validated_ready.{symbol}"),
    ("rejected.risk.BRK.B", "rejected.risk.{symbol}"),
    ("executed_ready", "executed_ready"),
], ids=["stage", "dotted-symbol", "rejection", "one-token"])
def test_a_span_is_named_after_its_operation_and_the_subject_with_the_symbol_left_out(subject, template):
    assert destination_template(subject) == template
    assert span_name("publish", subject) == f"publish {template}"


def test_a_published_event_is_a_producer_span_and_an_input_with_no_output_a_consumer_span():
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    tracing = Tracing("quant", "0.1.0", consumer="quant-1of2")
    exported = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(exported))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    try:
        tracing.hop("publish", "validated_ready.AAPL", message_id="evt-2", trace_id=trace_id,
                    span_id=ce.span_id("evt-2"), parent_span_id=ce.span_id("evt-1"), start_ns=1, end_ns=2,
                    attributes={"tradeflow.service": "quant"})
        tracing.hop("process", "signals_ready.AAPL", message_id="evt-3", trace_id=trace_id,
                    span_id=ce.span_id("quant:evt-3"), parent_span_id=ce.span_id("evt-1"), start_ns=1, end_ns=2,
                    attributes={}, error="bad: input")
    finally:
        tracing.provider.shutdown()
    published, processed = exported.get_finished_spans()
    assert (published.name, published.kind) == ("publish validated_ready.{symbol}", SpanKind.PRODUCER)
    assert f"{published.context.span_id:016x}" == ce.span_id("evt-2")
    assert f"{published.parent.span_id:016x}" == ce.span_id("evt-1")
    assert dict(published.attributes) == {
        "tradeflow.service": "quant", "messaging.system": "nats", "messaging.operation.name": "publish",
        "messaging.operation.type": "publish", "messaging.destination.name": "validated_ready.AAPL",
        "messaging.destination.template": "validated_ready.{symbol}", "messaging.message.id": "evt-2"}
    assert (processed.name, processed.kind) == ("process signals_ready.{symbol}", SpanKind.CONSUMER)
    assert processed.attributes["messaging.operation.type"] == "process"
    assert processed.attributes["messaging.consumer.group.name"] == "quant-1of2"
    assert processed.attributes["messaging.message.id"] == "evt-3"
    assert not processed.status.is_ok
