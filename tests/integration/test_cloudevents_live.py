"""Events the official CloudEvents SDK makes in structured mode (`content-type: application/cloudevents+json`,
its default) flow through a running pipeline like tradeflow's own; a malformed one is dead-lettered with a reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from cloudevents.core.bindings.http import to_structured_event
from cloudevents.core.v1.event import CloudEvent

from contracts.codec import decode
from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM
from services.ops import observe
from contracts.deadletters import DLQ_ERROR, DLQ_REASON, DLQ_SUBJECT
from services.ops.supervisor import http_json
from tests.integration.conftest import CONSUMERS, stream_messages, wait_for

pytestmark = pytest.mark.integration
ENV = {"TRADEFLOW_EXECUTION_COMMISSION_RATE": "0", "TRADEFLOW_EXECUTION_FILL_PRICE": "close"}
TRACE = "0af7651916cd43dd8448eb211c80319c"


def sdk_message(ce_type: str, event_id: str, data: dict) -> tuple[bytes, dict[str, str]]:
    event = CloudEvent({"specversion": "1.0", "id": event_id, "source": "https://example.com/desk one",
                        "type": ce_type, "time": datetime(2024, 1, 2, 14, 30, 5, tzinfo=timezone.utc),
                        "datacontenttype": "application/json", "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"},
                       data)
    message = to_structured_event(event)
    return message.body, dict(message.headers)


async def test_sdk_structured_events_are_processed_downstream(make_stack):
    stack, nc = await make_stack(env=ENV)
    signal = {"symbol": "CEV", "ts": "2024-01-02T14:30:00Z", "side": "buy", "strength": 0.5, "price": 10.0,
              "strategy": "manual"}
    bar = {"symbol": "CEB", "ts": "2024-01-02T14:30:00Z", "open": 20.0, "high": 21.0, "low": 19.0, "close": 20.0,
           "volume": 1000}
    for subject, ce_type, event_id, data in [("signals_ready.CEV", "tradeflow.signal.v1", "sdk-signal-1", signal),
                                             ("data_ready.CEB", "tradeflow.market_bar.v1", "sdk-bar-1", bar)]:
        raw, headers = sdk_message(ce_type, event_id, data)
        assert headers == {"content-type": "application/cloudevents+json"}
        await nc.publish(subject, raw, headers=headers)
    broken, headers = sdk_message("tradeflow.signal.v1", "sdk-signal-2", {**signal, "strength": "strong"})
    await nc.publish("signals_ready.CEV", broken, headers=headers)
    await nc.flush()

    async def reached_audit() -> bool:
        pf = (await http_json(stack.http_port("audit"), "/v1/portfolio"))[1]
        return pf["fills"] == 1 and pf["bars"] == 1

    await wait_for(reached_audit, what="the SDK's signal to be filled and its bar to reach audit")
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=30)
    pf = (await http_json(stack.http_port("audit"), "/v1/portfolio"))[1]
    assert pf["positions"]["CEV"] == {"quantity": 10.0, "avg_price": 10.0, "last_price": 10.0}

    # the journey the SDK's traceparent started carries on to the fill, one cause after the other
    events = [decode(m.subject, m.data, m.headers) for m in await stream_messages(nc, PIPELINE_STREAM)
              if m.subject.endswith(".CEV") and not (m.headers or {}).get("content-type")]
    by_id = {inc.id: inc for inc in events}
    fill = next(inc for inc in events if inc.envelope.subject == "executed_ready.CEV")
    chain = [fill]
    while chain[-1].envelope.causation_id in by_id:
        chain.append(by_id[chain[-1].envelope.causation_id])
    assert chain[-1].envelope.causation_id == "sdk-signal-1"
    assert {inc.envelope.trace_id for inc in chain} == {TRACE}

    letters = [m for m in await stream_messages(nc, DLQ_STREAM) if m.headers[DLQ_SUBJECT] == "signals_ready.CEV"]
    assert letters and all(m.data == broken for m in letters)
    assert {m.headers[DLQ_REASON] for m in letters} == {"undecodable"}
    assert all("$.strength" in m.headers[DLQ_ERROR] for m in letters)
