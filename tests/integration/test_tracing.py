"""OpenTelemetry export: with an OTLP endpoint set, every hop of a bar's journey is a span whose id is
the one its event's traceparent names, child of the span of the event it came from, named and described
as OpenTelemetry's messaging conventions say."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from contracts import envelope as ce
from contracts.codec import decode
from contracts.subjects import PIPELINE_STREAM
from services.ops import observe
from services.registry import CONSUMERS
from tests.integration.conftest import stream_messages, wait_for
from tests.integration.test_pipeline import LOGIC_ENV
from tests.local_http import serving

pytestmark = pytest.mark.integration
DATA = {"TRADEFLOW_DATA_SOURCE": "synthetic", "TRADEFLOW_DATA_SYMBOLS": "AAPL", "TRADEFLOW_DATA_BARS": "120",
        "TRADEFLOW_DATA_SEED": "11"}


async def test_a_fills_journey_is_one_trace_of_parent_and_child_spans(make_stack):
    spans: list[dict] = []
    bad_requests = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type != "application/x-protobuf":
            bad_requests.append(request.content_type)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append({"service": attrs["service.name"], "namespace": attrs.get("service.namespace"),
                                  "trace": span.trace_id.hex(), "span": span.span_id.hex(),
                                  "parent": span.parent_span_id.hex() or None, "name": span.name,
                                  "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
                                  "error": span.status.code == 2, "kind": span.kind,
                                  "attributes": {a.key: a.value.string_value for a in span.attributes}})
        return web.Response(body=b"", content_type="application/x-protobuf")

    async with serving(web.post("/v1/traces", receive)) as base:
        env = LOGIC_ENV | {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        stack, nc = await make_stack(env=env, per_service={"data": DATA})
        await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=60)
        fills = [decode(m.subject, m.data, m.headers)
                 for m in await stream_messages(nc, PIPELINE_STREAM, "executed_ready.>")]
        assert fills, "the bars made no fill: change the data"
        fill = fills[0]

        published = [decode(m.subject, m.data, m.headers) for m in await stream_messages(nc, PIPELINE_STREAM)]

        async def all_exported() -> bool:
            have = {s["span"] for s in spans}
            return all(ce.span_id(e.id) in have for e in published) and any(
                s["service"] == "audit" and s["trace"] == fill.envelope.trace_id for s in spans)

        await wait_for(all_exported, what="a span for every event, and audit's")
    assert not bad_requests
    trace = [s for s in spans if s["trace"] == fill.envelope.trace_id]
    by_span = {s["span"]: s for s in trace}
    # the fill's span carries its event's span id; walking up the parents reaches data's root span
    chain, node = [], by_span[ce.span_id(fill.id)]
    while node is not None:
        chain.append(node)
        node = by_span.get(node["parent"]) if node["parent"] else None
    assert [s["service"] for s in reversed(chain)] == ["data", "strategy", "quant", "risk", "execution"]
    # each hop's span publishes its event: `publish <subject template>`, a PRODUCER span
    assert [s["name"] for s in reversed(chain)] == [f"publish {stage}.{{symbol}}" for stage in (
        "data_ready", "signals_ready", "validated_ready", "approved_ready", "executed_ready")]
    assert all(s["kind"] == Span.SPAN_KIND_PRODUCER for s in chain)
    expected = {"messaging.system": "nats", "messaging.operation.name": "publish",
                "messaging.operation.type": "publish", "messaging.destination.name": fill.envelope.subject,
                "messaging.destination.template": "executed_ready.{symbol}", "messaging.message.id": fill.id}
    assert {k: chain[0]["attributes"].get(k) for k in expected} == expected
    assert chain[-1]["parent"] is None and all(s["namespace"] == "tradeflow" for s in chain)
    assert all(s["start"] <= s["end"] for s in trace)
    # audit records the fill: a leaf span under it, which processes it (CONSUMER, in audit's consumer group)
    [leaf] = [s for s in trace if s["service"] == "audit" and s["parent"] == ce.span_id(fill.id)]
    assert (leaf["name"], leaf["kind"]) == ("process executed_ready.{symbol}", Span.SPAN_KIND_CONSUMER)
    assert {k: leaf["attributes"].get(k) for k in ("messaging.operation.type", "messaging.destination.name",
                                                   "messaging.message.id", "messaging.consumer.group.name")} == {
        "messaging.operation.type": "process", "messaging.destination.name": fill.envelope.subject,
        "messaging.message.id": fill.id, "messaging.consumer.group.name": "audit"}
    # one span name per stage and operation, never one per symbol
    assert all(re.fullmatch(r"(publish|process) [a-z_]+(\.(quant|risk))?\.\{symbol\}", s["name"]) for s in spans)
    # every published event of the run has exactly one span, named after it
    counts = defaultdict(int)
    for s in spans:
        counts[s["span"]] += 1
    assert max(counts.values()) == 1
    assert {ce.span_id(e.id) for e in published} <= set(counts)
    assert not any(s["error"] for s in trace)
