"""The journey deadline: a stage paused past TRADEFLOW_JOURNEY_TIMEOUT is flagged overdue, with the stream
sequence and age of its oldest waiting event, in its metrics and in `tradeflow status` (exit 3); resumed,
the flag clears."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from contracts.subjects import PIPELINE_STREAM
from tests.integration.conftest import wait_for
from tests.integration.test_cli_and_http import BAR, tradeflow

DEADLINE = {"TRADEFLOW_JOURNEY_TIMEOUT": "2"}


async def overdue_metric(port: int, service: str) -> float | None:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
    samples = [x for x in families["tradeflow_journey_overdue"].samples if x.labels.get("service") == service]
    return samples[0].value if samples else None


async def test_a_stage_paused_past_the_deadline_is_flagged_and_cleared_when_it_resumes(make_stack):
    stack, nc = await make_stack(env=DEADLINE)
    jsm = nc.jsm()
    until = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await jsm.pause_consumer(PIPELINE_STREAM, "audit", until)
    ack = await nc.jetstream().publish("data_ready.AAPL", json.dumps(BAR).encode())
    env = {"NATS_URL": stack.nats_url, **DEADLINE}

    async def flagged() -> bool:
        code, out, _ = await tradeflow("status", "--json", env=env)
        audit = next(c for c in json.loads(out)["consumers"] if c["name"] == "audit")
        return code == 3 and audit["overdue"] and audit["oldest_waiting_seq"] == ack.seq and \
            audit["oldest_waiting_s"] > 2

    await wait_for(flagged, timeout=30, what="audit flagged overdue by tradeflow status")
    code, out, _ = await tradeflow("status", env=env)
    assert code == 3 and f"audit (stream seq {ack.seq} has waited" in out
    others = [c for c in json.loads((await tradeflow("status", "--json", env=env))[1])["consumers"]
              if c["name"] != "audit"]
    assert not any(c["overdue"] for c in others), others   # the others processed it

    async def metric_says(value: float) -> bool:
        return await overdue_metric(stack.http_port("audit"), "audit") == value

    await wait_for(lambda: metric_says(1.0), timeout=15, what="tradeflow_journey_overdue 1 from audit")
    await jsm.resume_consumer(PIPELINE_STREAM, "audit")

    async def cleared() -> bool:
        code, out, _ = await tradeflow("status", "--json", env=env)
        return code == 0 and not any(c["overdue"] for c in json.loads(out)["consumers"])

    await wait_for(cleared, timeout=30, what="the flag cleared once audit caught up")
    await wait_for(lambda: metric_says(0.0), timeout=15, what="tradeflow_journey_overdue back to 0")
