"""`tradeflow dlq` against a live deployment: list, show, redrive after the cause is fixed (one effect,
however often it is redriven), a redrive limit, purge, and one-line errors."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import orjson
import pytest

from contracts.deadletters import DeadLetter
from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM
from services.ops import observe
from services.runtime.deadletters import redriven
from services.runtime.publish import Publisher
from tests.integration.conftest import CONSUMERS, stream_messages, wait_for

pytestmark = pytest.mark.integration

FAULTY = {"TRADEFLOW_FAULT_FAIL_ON": "poison", "TRADEFLOW_MAX_DELIVER": "2", "TRADEFLOW_BACKOFF": "0.2"}
ENV = {"TRADEFLOW_EXECUTION_FILL_PRICE": "close"}


def order(order_id: str, quantity: float = 10) -> bytes:
    return orjson.dumps({"symbol": "AAPL", "ts": "2024-01-02T14:30:00Z", "order_id": order_id, "side": "buy",
                         "quantity": quantity, "price": 100.0})


async def tradeflow(*args: str, nats_url: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, env={**os.environ, "NATS_URL": nats_url},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode, out.decode(), err.decode()


async def fills_of(nc, order_id: str) -> int:
    return sum(1 for m in await stream_messages(nc, PIPELINE_STREAM, "executed_ready.>")
               if json.loads(m.data)["order_id"] == order_id)


async def test_redrive_after_the_fix_fills_once_however_often_it_is_sent(make_stack):
    stack, nc = await make_stack(env=ENV, per_service={"execution": FAULTY})
    url = stack.nats_url
    js = nc.jetstream()
    await js.publish("approved_ready.AAPL", order("poison-1"), headers={"Nats-Msg-Id": "approved-poison-1"})
    await js.publish("approved_ready.AAPL", order("good-1"))

    async def dead_lettered() -> bool:
        return await observe.dead_letters(nc.jsm()) == 1

    await wait_for(dead_lettered, timeout=30, what="the failing order in the DLQ")
    code, out, err = await tradeflow("dlq", "list", "--service", "execution", "--json", nats_url=url)
    assert code == 0, err
    [letter] = [json.loads(line) for line in out.splitlines()]
    assert (letter["subject"], letter["reason"], letter["deliveries"]) == ("approved_ready.AAPL", "max_deliveries", 2)
    assert letter["original_id"] == "approved-poison-1" and "fault injected" in letter["error"]
    code, out, _ = await tradeflow("dlq", "show", str(letter["seq"]), nats_url=url)
    assert code == 0 and json.loads(out)["body"]["order_id"] == "poison-1"
    assert await fills_of(nc, "good-1") == 1 and await fills_of(nc, "poison-1") == 0

    stack.per_service_env["execution"] = {}                  # the cause is fixed
    await stack.restart_service("execution")
    raw = await nc.jsm().get_msg(DLQ_STREAM, letter["seq"])  # kept, to send its redrive again below
    code, out, err = await tradeflow("dlq", "redrive", str(letter["seq"]), nats_url=url)
    assert code == 0 and "1 redriven, 0 already redriven" in err, out + err
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=30)
    assert await fills_of(nc, "poison-1") == 1 and await observe.dead_letters(nc.jsm()) == 0

    # the same dead letter redriven again, inside and past the duplicate window: still one fill
    again = redriven(DeadLetter.of(raw.seq, raw.subject, raw.headers, raw.data))
    [ack] = await Publisher(js, timeout=5, window=8).publish([again])
    assert ack.duplicate
    await js.publish(again.subject, again.body, headers={**again.headers, "Nats-Msg-Id": "past-the-window"})
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=30)
    assert await fills_of(nc, "poison-1") == 1
    code, _, err = await tradeflow("dlq", "redrive", str(letter["seq"]), nats_url=url)
    assert code == 1 and f"no dead letter {letter['seq']}" in err


async def test_a_message_that_keeps_failing_is_refused_after_the_redrive_limit(make_stack):
    stack, nc = await make_stack(env=ENV, services=("execution",))
    url = stack.nats_url
    await nc.jetstream().publish("approved_ready.AAPL", order("bad-1", quantity=-5))
    for count in range(3):
        async def in_dlq() -> bool:
            return await observe.dead_letters(nc.jsm()) == 1

        await wait_for(in_dlq, timeout=30, what="the bad order in the DLQ")
        [letter] = await stream_messages(nc, DLQ_STREAM)
        assert letter.headers.get("tradeflow-redrive-count", "0") == str(count)
        code, out, err = await tradeflow("dlq", "redrive", "--reason", "undecodable", "--max-redrives", "2",
                                         nats_url=url)
        if count < 2:
            assert code == 0 and "1 redriven" in err, err
        else:
            assert code == 1 and "redriven 2 times already" in err, err
    code, out, err = await tradeflow("dlq", "purge", "--all", nats_url=url, stdin=b"n\n")
    assert code == 1 and await observe.dead_letters(nc.jsm()) == 1
    code, out, err = await tradeflow("dlq", "purge", "--all", "--yes", nats_url=url)
    assert code == 0 and "purged 1" in out and await observe.dead_letters(nc.jsm()) == 0

    for args, message in [(("dlq", "show", "99999"), "no dead letter 99999"),
                          (("dlq", "list", "--older-than", "soon"), "is not an age"),
                          (("dlq", "redrive"), "give dead letter ids, a filter"),
                          (("dlq", "purge", "--subject", "x.>", "--yes"), "nothing to purge"),
                          (("dlq", "show", "-3"), "-3")]:
        code, out, err = await tradeflow(*args, nats_url=url)
        assert code != 0 and message in err, (args, err)
        assert len(err.strip().splitlines()[-1]) < 300
    code, _, err = await tradeflow("dlq", "list", nats_url="nats://127.0.0.1:1")
    assert code == 1 and "cannot reach NATS" in err


async def test_a_message_that_crashes_its_service_is_dead_lettered_and_the_rest_flow(make_stack):
    crashing = {"TRADEFLOW_FAULT_EXIT_ON": "crash-me", "TRADEFLOW_MAX_DELIVER": "3", "TRADEFLOW_ACK_WAIT": "2"}
    stack, nc = await make_stack(per_service={"quant": crashing})
    js = nc.jetstream()
    for symbol in ("AAA", "BBB", "CCC", "DDD", "EEE"):
        signal = {"symbol": symbol, "ts": "2024-01-02T14:30:00Z", "side": "buy", "strength": 0.5, "price": 10.0,
                  "strategy": "crash-me" if symbol == "CCC" else "sma_cross"}
        await js.publish(f"signals_ready.{symbol}", orjson.dumps(signal))

    async def captured() -> bool:
        return await observe.dead_letters(nc.jsm()) == 1

    await wait_for(captured, timeout=90, what="the crashing message in the DLQ")
    [letter] = await stream_messages(nc, DLQ_STREAM)
    assert letter.subject == "dlq.quant.signals_ready.CCC"
    assert (letter.headers["tradeflow-dlq-reason"], letter.headers["tradeflow-dlq-deliveries"]) == ("max_deliveries",
                                                                                                   "3")
    validated = {m.subject for m in await stream_messages(nc, PIPELINE_STREAM, "validated_ready.>")}
    assert validated == {f"validated_ready.{s}" for s in ("AAA", "BBB", "DDD", "EEE")}
    assert stack.supervisor.procs["quant"].process.returncode is None, "quant runs on after the crashes"


async def test_one_bad_bar_dead_lettered_by_every_stage_that_takes_bars_is_one_line(make_stack):
    """Strategy, risk, execution and audit each consume bars, and each dead-letters a bad one: `dlq list`
    shows the event once, with every service that gave up on it; --each and --json show every copy."""
    stack, nc = await make_stack(env=ENV)
    url = stack.nats_url
    await nc.jetstream().publish("data_ready.AAPL", b'{"symbol": "AAPL", "ts": "not a time"}')

    async def every_stage() -> bool:
        return await observe.dead_letters(nc.jsm()) == 4

    await wait_for(every_stage, timeout=30, what="four copies of the bad bar in the DLQ")
    code, out, err = await tradeflow("dlq", "list", nats_url=url)
    assert code == 0, err
    [header, line] = out.splitlines()
    first, _, services, subject = line.split()[:4]
    assert first.endswith("+3") and subject == "data_ready.AAPL"
    assert sorted(services.split(",")) == ["audit", "execution", "risk", "strategy"]
    assert "4 dead letter(s) of 1 event(s)" in err
    code, out, _ = await tradeflow("dlq", "list", "--each", nats_url=url)
    assert len(out.splitlines()) == 5
    code, out, _ = await tradeflow("dlq", "list", "--json", nats_url=url)
    letters = [json.loads(line) for line in out.splitlines()]
    assert len(letters) == 4 and all(sorted(x["copies"]) == sorted(y["seq"] for y in letters) for x in letters)
