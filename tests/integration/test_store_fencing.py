"""One recorder writes: a second one on the same store and durable (a replacement started beside one still
alive) waits, unready, consuming nothing; when the first dies it takes over, and the store holds every
event of the stream exactly once."""

from __future__ import annotations

import signal

import aiohttp
import pytest

from contracts.subjects import PIPELINE_STREAM
from services.ops import observe
from services.ops.supervisor import Proc, free_port, http_json, wait_ready
from services.registry import DURABLES
from services.runtime.store import open_event_store
from tests.integration.conftest import stream_messages, wait_for
from tests.stores import location_for
from tests.unit.test_backtesting_parity import PARITY_ENV

pytestmark = pytest.mark.integration

# ~14 s of bars: the first recorder is killed with much of the feed still to come, for the second to record
GOOG = {"TRADEFLOW_DATA_SOURCE": "csv", "TRADEFLOW_DATA_FILES": "GOOG", "TRADEFLOW_DATA_RATE": "150"}
HOLDS = "another recorder holds the event store"
TOOK = "this recorder holds the event store"


def second_recorder(stack) -> Proc:
    """Another recorder process, as the stack would start one, on a port of its own."""
    first = stack.service_proc("recorder")
    port = free_port()
    proc = Proc("recorder-2", first.argv, {**first.env, "TRADEFLOW_HTTP_PORT": str(port)},
                stack.logs / "recorder-2.log")
    proc.http_port = port
    return proc


def said(proc: Proc, text: str) -> int:
    """How many log lines of `proc` say `text`."""
    return sum(text in line for line in proc.log_path.read_text().splitlines()) if proc.log_path.exists() else 0


async def standing_by(proc: Proc) -> bool:
    """The recorder waits for the store: its health says it does not hold it, it is not ready."""
    try:
        _, health = await http_json(proc.http_port or 0, "/v1/health")
        ready, _ = await http_json(proc.http_port or 0, "/readyz")
    except OSError:
        return False
    return health["checks"].get("store_writer") is False and ready == 503 and said(proc, HOLDS) == 1


async def consumed(port: int) -> bool:
    """Whether a recorder has taken in any message (its Prometheus counter)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return "tradeflow_messages_in_total{" in await resp.text()


# on PostgreSQL, the deployment where a second recorder on another host can happen (the SQLite fence, a flock,
# is tested with a killed process in tests/unit/test_store_writer.py)
@pytest.mark.parametrize("kind", ["postgresql"])
async def test_one_recorder_writes_and_the_second_takes_over_when_it_dies(make_stack, request, tmp_path, kind):
    store = {"TRADEFLOW_STORE": location_for(kind, request, tmp_path)} if kind != "sqlite" else {}
    stack, nc = await make_stack(env={**PARITY_ENV, **store},
                                 per_service={"data": GOOG, "recorder": {"TRADEFLOW_ACK_WAIT": "2"}})
    second = await stack.supervisor.start(second_recorder(stack))
    await wait_for(lambda: standing_by(second), timeout=30, what="the second recorder standing by")
    first_port = stack.http_port("recorder")

    async def some_recorded() -> bool:
        return (await http_json(first_port, "/v1/store"))[1]["count"] >= 600

    await wait_for(some_recorded, timeout=60, what="600 events recorded by the first recorder")
    assert await standing_by(second) and not await consumed(second.http_port or 0), "the second one took in events"

    _, progress = await http_json(stack.http_port("data"), "/v1/progress")
    assert not progress.get("done"), "the kill would not land mid-stream; slow the feed down"
    assert await stack.supervisor.stop("recorder", signal.SIGKILL) == -signal.SIGKILL
    await wait_ready(second.http_port or 0, 60, second)
    assert said(second, TOOK) == 1 and said(second, HOLDS) == 1
    await stack.start_service("recorder", wait=False)   # the first comes back: now it is the one that waits
    await wait_for(lambda: standing_by(stack.supervisor.procs["recorder"]), timeout=30,
                   what="the restarted first recorder standing by")

    async def published_all() -> bool:
        return bool((await http_json(stack.http_port("data"), "/v1/progress"))[1].get("done"))

    await wait_for(published_all, timeout=120, what="every bar published")
    await observe.wait_drained(nc.jsm(), DURABLES, timeout=120)
    assert await consumed(second.http_port or 0)
    messages = await stream_messages(nc, PIPELINE_STREAM)
    async with open_event_store(stack.store_location(), read_only=True) as events:
        stored = [e async for e in events.query(by="stream_seq")]
    assert len(messages) > 2000 and [e.stream_seq for e in stored] == [m.metadata.sequence.stream for m in messages]
    assert [e.id for e in stored] == [m.headers["ce-id"] for m in messages], "every event recorded exactly once"
