"""OpenTelemetry export of every hop, off unless an OTLP endpoint is configured.

Each event carries a W3C `traceparent` whose span is named after the event's id
(contracts/envelope.py); a bar starts a trace and everything made of it joins it. With
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) set, each service exports,
over OTLP/HTTP, one span per event it publishes, with exactly that span id, as a child of the
span of the event it came from: data's bar is the root, then strategy's signal, quant's
decision, risk's order, execution's fill, and audit's leaf span for recording it. A span runs
from the start of the batch that handled the input to the PubAck of the output, so a trace in
Jaeger or Tempo shows where a bar's time went, hop by hop (`tradeflow trace` shows the same from
the event store). The standard OTEL_* variables apply (headers, timeouts, OTEL_BSP_* batching);
spans leave from the SDK's batch processor thread, never from the event loop.

Spans follow OpenTelemetry's messaging conventions: named `{operation} {destination template}`,
the subject with its symbol left as a placeholder (`publish signals_ready.{symbol}`,
`process executed_ready.{symbol}`, `publish rejected.quant.{symbol}`), one name per stage and not
one per instrument. The span of an event published is `publish`, kind PRODUCER (its context is
the event's creation context); an input that led to no event gets a `process` span, kind CONSUMER,
with the consumer's durable as `messaging.consumer.group.name`. Each has `messaging.system=nats`,
`messaging.operation.name`/`.type`, `messaging.destination.name` (the subject) and `.template`,
and `messaging.message.id` (the event id).

    pip install 'tradeflow[otel]'      opentelemetry-sdk and the OTLP/HTTP exporter
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Mapping
from typing import Literal

from contracts.errors import ConfigError
from contracts.subjects import REJECTED

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
Operation = Literal["publish", "process"]   # messaging.operation.type, and its name


def destination_template(subject: str) -> str:
    """The subject with its symbol as `{symbol}`: `signals_ready.AAPL` -> `signals_ready.{symbol}`,
    `rejected.risk.BRK.B` -> `rejected.risk.{symbol}`; a subject of one token is its own."""
    stage, _, rest = subject.partition(".")
    if stage == REJECTED:
        rejecting, _, rest = rest.partition(".")
        stage = f"{stage}.{rejecting}"
    return f"{stage}.{{symbol}}" if rest else stage


def span_name(operation: Operation, subject: str) -> str:
    """`{messaging.operation.name} {destination template}`, e.g. `publish validated_ready.{symbol}`."""
    return f"{operation} {destination_template(subject)}"


class Tracing:
    """Spans with the ids the events' traceparents name, exported in the background."""

    def __init__(self, service: str, version: str, consumer: str | None = None) -> None:
        """`consumer`: the service's durable, the consumer group of its `process` spans."""
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.sdk.trace.id_generator import IdGenerator
        except ImportError:
            raise ConfigError("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed: "
                              "pip install 'tradeflow[otel]'") from None
        from opentelemetry import trace
        from opentelemetry.context import Context

        preset = threading.local()

        class PresetIds(IdGenerator):
            """The ids hop() asks for: the span of an event is named after the event."""

            def generate_span_id(self) -> int:
                return getattr(preset, "span", None) or random.getrandbits(64)

            def generate_trace_id(self) -> int:
                return getattr(preset, "trace", None) or random.getrandbits(128)

        self.consumer = consumer
        self._preset = preset
        self._trace = trace
        self._empty = Context
        self.provider = TracerProvider(resource=Resource.create({"service.name": service,
                                                                 "service.namespace": "tradeflow",
                                                                 "service.version": version}),
                                       id_generator=PresetIds())
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("tradeflow", version)

    @classmethod
    def from_env(cls, service: str, version: str, environ: Mapping[str, str] | None = None, *,
                 consumer: str | None = None) -> Tracing | None:
        """A Tracing when an OTLP endpoint is configured, else None (nothing is recorded)."""
        environ = os.environ if environ is None else environ
        if not any(environ.get(name) for name in ENDPOINT_VARIABLES):
            return None
        return cls(service, version, consumer)

    def messaging(self, operation: Operation, subject: str, message_id: str) -> dict[str, str]:
        """The messaging attributes of a span that publishes or processes the message `message_id` on `subject`."""
        out = {"messaging.system": "nats", "messaging.operation.name": operation,
               "messaging.operation.type": operation, "messaging.destination.name": subject,
               "messaging.destination.template": destination_template(subject), "messaging.message.id": message_id}
        if operation == "process" and self.consumer:
            out["messaging.consumer.group.name"] = self.consumer
        return out

    def hop(self, operation: Operation, subject: str, *, message_id: str, trace_id: str, span_id: str,
            parent_span_id: str | None, start_ns: int, end_ns: int,
            attributes: Mapping[str, str | int | float | bool], error: str | None = None) -> None:
        """Record one span with these ids (hex), as a child of `parent_span_id` (none: a root): `publish` of the
        event `message_id` on `subject` (PRODUCER), or `process` of the input `message_id` (CONSUMER)."""
        trace = self._trace
        kind = trace.SpanKind.PRODUCER if operation == "publish" else trace.SpanKind.CONSUMER
        if parent_span_id:
            parent = trace.SpanContext(trace_id=int(trace_id, 16), span_id=int(parent_span_id, 16), is_remote=True,
                                       trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        else:
            context = self._empty()
        self._preset.span, self._preset.trace = int(span_id, 16), int(trace_id, 16)
        try:
            span = self.tracer.start_span(span_name(operation, subject), context=context, kind=kind,
                                          start_time=start_ns,
                                          attributes={**attributes, **self.messaging(operation, subject, message_id)})
        finally:
            self._preset.span = self._preset.trace = None
        if error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error[:300]))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Export what is queued and stop (blocking: call it in a thread)."""
        self.provider.shutdown()
