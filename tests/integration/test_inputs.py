"""Header-less JSON (as `nats pub` sends it) works at every stage; bad input goes to the DLQ
with a readable reason while the messages around it flow on."""

from __future__ import annotations

import json

import pytest

from contracts.deadletters import DLQ_ERROR, DLQ_REASON, DLQ_SERVICE, DLQ_SUBJECT
from contracts.subjects import DLQ_STREAM
from services.ops import observe
from services.ops.supervisor import http_json
from tests.integration.conftest import CONSUMERS, stream_messages, wait_for

pytestmark = pytest.mark.integration
# fills at the order's own price: the injected orders have no later bar to fill at
ENV = {"TRADEFLOW_EXECUTION_COMMISSION_RATE": "0", "TRADEFLOW_EXECUTION_FILL_PRICE": "close"}


def bar(symbol: str, minute: int, price: float = 100.0, **extra) -> dict:
    return {"symbol": symbol, "ts": f"2024-01-02T14:{minute:02d}:00Z", "open": price, "high": price + 1,
            "low": price - 1, "close": price, "volume": 1000, **extra}


def body(obj) -> bytes:
    return json.dumps(obj).encode()


async def portfolio(stack) -> dict:
    return (await http_json(stack.http_port("audit"), "/v1/portfolio"))[1]


async def test_header_less_json_is_accepted_at_every_stage(make_stack):
    stack, nc = await make_stack(env=ENV)
    signal = {"symbol": "SIG", "ts": "2024-01-02T14:30:00Z", "side": "buy", "strength": 0.5, "price": 10.0,
              "strategy": "manual"}
    validated = {"symbol": "VAL", "ts": "2024-01-02T14:30:00Z", "side": "buy", "strength": 0.5, "price": 20.0,
                 "strategy": "manual"}
    order = {"symbol": "ORD", "ts": "2024-01-02T14:30:00Z", "order_id": "manual-1", "side": "buy",
             "quantity": 3, "price": 30.0}
    fill = {"symbol": "FIL", "ts": "2024-01-02T14:30:00Z", "order_id": "manual-2", "side": "sell",
            "quantity": 2, "price": 40.0, "commission": 0}
    # plain core-NATS publishes with no headers at all, exactly what `nats pub SUBJECT BODY` does
    await nc.publish("data_ready.BAR", body(bar("BAR", 30)))
    await nc.publish("signals_ready.SIG", body(signal))
    await nc.publish("signals_ready.SIG", body(signal))  # the same body again: the same id, one effect
    await nc.publish("validated_ready.VAL", body(validated))
    await nc.publish("approved_ready.ORD", body(order))
    await nc.publish("executed_ready.FIL", body(fill))
    await nc.flush()

    async def all_reached_audit() -> bool:
        pf = await portfolio(stack)
        return pf["fills"] == 4 and pf["bars"] == 1

    await wait_for(all_reached_audit, what="every header-less event to reach audit")
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=30)
    pf = await portfolio(stack)
    # risk sizes to its default order quantity (10); execution fills what it is told
    assert pf["positions"] == {
        "FIL": {"quantity": -2.0, "avg_price": 40.0, "last_price": 40.0},
        "ORD": {"quantity": 3.0, "avg_price": 30.0, "last_price": 30.0},
        "SIG": {"quantity": 10.0, "avg_price": 10.0, "last_price": 10.0},
        "VAL": {"quantity": 10.0, "avg_price": 20.0, "last_price": 20.0},
    }
    assert pf["fills"] == 4, "the repeated signal was filled twice"
    assert await observe.dead_letters(nc.jsm()) == 0


BAD = [
    pytest.param("data_ready.AAPL", b'{"symbol": "AAPL", "ts": ', "undecodable", "malformed JSON", id="truncated-json"),
    pytest.param("data_ready.AAPL", b"", "undecodable", "malformed JSON", id="empty-body"),
    pytest.param("data_ready.AAPL", b"\xff\xfe\x00garbage", "undecodable", "malformed JSON", id="binary-garbage"),
    pytest.param("data_ready.AAPL", b"[1, 2, 3]", "undecodable", "Expected `object`", id="json-array"),
    pytest.param("data_ready.AAPL", body(bar("AAPL", 50, open="abc")), "undecodable", "Expected `float`, got `str`",
                 id="wrong-type"),
    pytest.param("data_ready.AAPL", body(bar("AAPL", 50, foo=1)), "undecodable", "unknown field `foo`",
                 id="unknown-field"),
    pytest.param("data_ready.AAPL", body(bar("AAPL", 50)).replace(b'"close": 100.0', b'"close": 1e999'),
                 "undecodable", "Number out of range", id="infinite-price"),
    pytest.param("data_ready.AAPL", body(bar("AAPL", 50, low=-1.0)), "undecodable", "Expected `float` > 0",
                 id="negative-price"),
    pytest.param("data_ready.AAPL", body(bar("AAPL", 50, high=98.0)), "undecodable", "below low",
                 id="high-below-low"),
    pytest.param("data_ready.AAPL", body(bar("MSFT", 50)), "subject_mismatch", "does not match subject",
                 id="symbol-mismatch"),
    pytest.param("data_ready.AAPL", body(bar("AAPL", 50, pad="x" * 70_000)), "too_large", "over the",
                 id="oversize"),
    pytest.param("data_ready.aapl", body(bar("AAPL", 50)), "unknown_subject", "no valid symbol",
                 id="lowercase-subject"),
    pytest.param("approved_ready.AAPL", body({"symbol": "AAPL", "ts": "2024-01-02T14:30:00Z", "order_id": "o-0",
                                              "side": "buy", "quantity": 0, "price": 10.0}),
                 "undecodable", "Expected `float` > 0", id="zero-quantity"),
    pytest.param("approved_ready.AAPL", body({"symbol": "AAPL", "ts": "2024-01-02T14:30:00Z", "order_id": "o-1",
                                              "side": "buy", "quantity": -5, "price": 10.0}),
                 "undecodable", "Expected `float` > 0", id="negative-quantity"),
]


async def test_bad_input_lands_in_dlq_with_a_reason_and_neighbours_flow_on(make_stack):
    stack, nc = await make_stack(env=ENV)
    good = 0
    for minute, case in enumerate(BAD):
        subject, raw = case.values[0], case.values[1]
        await nc.publish("data_ready.AAPL", body(bar("AAPL", minute)))  # a good neighbour before each
        good += 1
        await nc.publish(subject, raw)
    await nc.publish("data_ready.AAPL", body(bar("AAPL", 59)))
    good += 1
    await nc.flush()
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=60)

    assert (await portfolio(stack))["bars"] == good, "a good bar next to a bad one was lost"
    letters = await stream_messages(nc, DLQ_STREAM)
    for case in BAD:
        subject, raw, reason, text = case.values
        mine = [m for m in letters if m.data == raw and m.headers[DLQ_SUBJECT] == subject]
        assert mine, f"{case.id}: not dead-lettered"
        for letter in mine:
            assert letter.headers[DLQ_REASON] == reason, case.id
            assert text in letter.headers[DLQ_ERROR], (case.id, letter.headers[DLQ_ERROR])
            assert letter.subject == f"dlq.{letter.headers[DLQ_SERVICE]}.{subject}"
    # strategy, risk, execution and audit each consume data_ready; execution also approved_ready;
    # nothing lost or invented
    by_service = {(m.headers[DLQ_SERVICE], m.headers[DLQ_SUBJECT]) for m in letters}
    for service in ("strategy", "risk", "execution", "audit"):
        assert (service, "data_ready.AAPL") in by_service, service
    assert ("execution", "approved_ready.AAPL") in by_service
    expected = sum(4 if c.values[0].startswith("data_ready") else 1 for c in BAD)
    assert len(letters) == expected
