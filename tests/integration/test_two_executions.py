"""Two execution processes on one durable, sharing a PostgreSQL fill ledger, never fill an order twice.

What a Recreate deployment does when the old pod is still alive beside its replacement, or a paused
process (a long GC, a frozen VM) that wakes up after JetStream gave its messages to the other: both
handle some of the same orders. The ledger keeps the first fill of each, each process publishes the
fill that stands, and every stage still comes out as the pure logic predicts (but for what depends on
the order fills arrive in: see check_every_stage). (`tradeflow up`'s replicas are for per-symbol stages,
each on a durable of its own, and execution refuses TRADEFLOW_PARTITION: the second process is started
here by hand, with the first one's environment.)

Fills here are at the order's own price (fill_price=close): with two processes alive each sees only
part of the bars, so a fill at the next bar's open could be made on a later bar than the one that
followed the order (the bar went to the other process). That is why execution runs as one instance;
the ledger is what makes a second one harmless to the account, not right about prices.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import psycopg
import pytest

from contracts.codec import decode
from contracts.events import OrderFilled
from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM
from services.audit import trail
from services.execution.ledger import open_ledger
from services.ops import observe
from services.ops.demo import audit_trail_location, wait_published
from services.ops.supervisor import Proc, free_port, wait_ready
from services.registry import CONSUMERS, SERVICES
from tests.integration.conftest import stream_messages, wait_for
from tests.integration.test_pipeline import DATA_ENV, LOGIC_ENV, assert_counts_and_portfolio, predicted

pytestmark = pytest.mark.integration

# redelivery after a pause comes after ack_wait: keep it short; fills depend on the order alone (see above)
ENV = LOGIC_ENV | {"TRADEFLOW_EXECUTION_FILL_PRICE": "close", "TRADEFLOW_ACK_WAIT": "2",
                   "TRADEFLOW_BACKOFF": "0.2,0.5,1"}
LEDGER = "TRADEFLOW_EXECUTION_LEDGER"


async def start_second_execution(stack, ledger: str) -> Proc:
    """Another execution process with the first one's settings on the same durable, as a second pod would be:
    its own HTTP port and data folder, the same ledger (`ledger`: its URL, naming this process)."""
    first = stack.supervisor.procs["execution"]
    port = free_port()
    env = first.env | {"TRADEFLOW_HTTP_PORT": str(port), "TRADEFLOW_DATA_DIR": str(stack.home / "host-2"),
                       LEDGER: ledger}
    proc = Proc("execution-2", first.argv, env, stack.logs / "execution-2.log")
    proc.http_port = port
    await stack.supervisor.start(proc)
    await wait_ready(port, 60, proc)
    return proc


async def waiting_to_record(admin: psycopg.AsyncConnection, on: str) -> set[str]:
    """The execution processes (their connections' application_name) whose insert of fills waits for a lock:
    `relation`, the table's; `transactionid`, another transaction's uncommitted row of the same order."""
    cur = await admin.execute("SELECT application_name FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                              "AND wait_event = %s AND query LIKE 'INSERT INTO fills%%'", [on])
    return {name for (name,) in await cur.fetchall()}


async def insert_found_all_there(admin: psycopg.AsyncConnection, app: str) -> bool:
    """Whether `app`'s insert of fills is done and inserted nothing (every order of it was recorded already):
    its transaction is still open (its process is frozen) and has written nothing (no transaction id)."""
    cur = await admin.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = "
                              "'idle in transaction' AND backend_xid IS NULL AND query LIKE 'INSERT INTO fills%%'",
                              [app])
    return await cur.fetchone() is not None


async def elsewhere(port: int) -> float:
    """What a process's tradeflow_fills_recorded_elsewhere says: orders it found filled by the other."""
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tradeflow_fills_recorded_elsewhere_total{"))


@pytest.mark.faults   # freezes a service mid-stream
async def test_two_execution_processes_on_one_durable_never_fill_an_order_twice(make_stack, pg_url):
    """Both consume the one durable. The ledger is made to hold its writes (a table lock) until a process waits
    in the middle of recording a batch with fills; that process is frozen there (SIGSTOP) past ack_wait, so
    JetStream gives its batch to the other. The lock goes, and the two inserts of those orders race: the
    frozen process's is made but not committed and the other's waits on it, or the other's is committed first
    and the frozen one's finds it. Then the frozen one wakes, and is stopped once the second to record has been
    told whose fills stand (the old pod going away): each order is filled once, both published the fill that
    stands, and every stage is as predicted.

    The two consume side by side only for those seconds: for longer, the runtime's ordering guard (a stateful
    worker that sees deliveries it never got waits ack_wait for them, and lets its batch go) bounces batches
    between them until max_deliver dead-letters some; at most one execution process is meant to be alive."""
    _, sim, _ = predicted(ENV)
    assert sim.counts["executed_ready"] > 5
    names = {"execution-1": "execution", "execution-2": "execution-2"}   # application_name -> supervisor's name
    stack, nc = await make_stack(env=ENV, services=tuple(s for s in SERVICES if s != "data"), per_service={
        "data": DATA_ENV | {"TRADEFLOW_DATA_RATE": "100"},
        "execution": {LEDGER: f"{pg_url}?application_name=execution-1"}})
    second = await start_second_execution(stack, f"{pg_url}?application_name=execution-2")
    ports = {"execution-1": stack.http_port("execution"), "execution-2": second.http_port}
    await stack.start_service("data")   # the bars flow once both consume
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin, \
            await psycopg.AsyncConnection.connect(pg_url) as locker:
        await locker.execute("LOCK TABLE fills IN EXCLUSIVE MODE")   # lookups still read; inserts wait

        async def one_waits() -> bool:
            return bool(await waiting_to_record(admin, "relation"))

        await wait_for(one_waits, timeout=90, what="an execution process to wait to record fills")
        frozen = min(await waiting_to_record(admin, "relation"))
        [other] = set(names) - {frozen}
        process = stack.supervisor.procs[names[frozen]].process
        process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(float(ENV["TRADEFLOW_ACK_WAIT"]) + 1)   # its batch goes back to the stream
            await locker.commit()

            async def both_have_recorded() -> bool:
                """The frozen one's insert went first and the other, recording the same orders, waits on it; or
                the other's went first, and the frozen one's found every order of its batch recorded."""
                return other in await waiting_to_record(admin, "transactionid") or \
                    await insert_found_all_there(admin, frozen)

            await wait_for(both_have_recorded, timeout=30, what="both processes to record the frozen one's orders")
            second_to_record = other if other in await waiting_to_record(admin, "transactionid") else frozen
        finally:
            process.send_signal(signal.SIGCONT)

    async def told() -> bool:   # the second to record was told the first one's fills stand
        return await elsewhere(ports[second_to_record]) >= 1

    await wait_for(told, timeout=60, what=f"{second_to_record} to find the other's fills")
    assert await stack.supervisor.stop(names[frozen]) == 0
    published = await check_every_stage(stack, nc, sim)
    async with open_ledger(pg_url) as ledger:   # the ledger holds exactly what was published: the standing fills
        assert await ledger.count() == len(published)
        assert await ledger.lookup([f.event.order_id for f in published]) == {f.event.order_id: f.event
                                                                              for f in published}
    for name in ("execution-2", "data"):   # not the stack's own: stopped before the servers
        assert await stack.supervisor.stop(name) == 0


def fills(sim) -> list[tuple[str, OrderFilled]]:
    """The predicted fills, with their event ids."""
    return [(event_id, event) for event_id, event in sim.events if isinstance(event, OrderFilled)]


async def check_every_stage(stack, nc, sim) -> list:
    """No order filled twice (stream, audit trail); every fill the one predicted for its order, id and body.
    With nothing dead-lettered, what test_pipeline's check says too, but for the order of one symbol's fills:
    the frozen process's batch is published after fills the other made meanwhile, so what folds fills in their
    order of arrival (audit's trade lines, risk's book of fills) may differ from the prediction; what folds
    them in event time (audit's portfolio) may not. When the two side by side bounced batches to max_deliver
    (on a loaded machine), each order not filled is in the DLQ: given up on, never lost. The fills published."""
    await wait_published(stack, timeout=60)
    await observe.wait_drained(nc.jsm(), CONSUMERS, timeout=60)
    published = [decode(m.subject, m.data, m.headers) for m in await stream_messages(nc, PIPELINE_STREAM,
                                                                                     "executed_ready.>")]
    assert len({f.event.order_id for f in published}) == len(published), "an order was filled twice"
    predicted = {f.order_id: (event_id, f) for event_id, f in fills(sim)}
    assert all(predicted[f.event.order_id] == (f.id, f.event) for f in published)   # ids and bodies, as predicted
    lines = [line for line in await trail.read(audit_trail_location(stack)) if line["type"] == "fill"]
    assert sorted(line["id"] for line in lines) == sorted(f.id for f in published)   # audited once each
    if await observe.dead_letters(nc.jsm()) == 0:   # nothing given up on: every stage as predicted
        await assert_counts_and_portfolio(stack, nc, sim, timeout=60)
    else:   # two alive side by side bounced batches to max_deliver: what did not fill is in the DLQ, not lost
        letters = await stream_messages(nc, DLQ_STREAM, "dlq.execution.approved_ready.>")
        given_up = {decode(m.subject.split(".", 2)[2], m.data, m.headers).event.order_id for m in letters}
        assert set(predicted) == {f.event.order_id for f in published} | given_up
    return published


async def test_an_execution_whose_ledger_cannot_be_used_stops_with_one_line(make_stack, pg_url):
    """`tradeflow run execution` with a malformed ledger URL, an unreachable database, or a database whose ledger
    schema is newer than the code: exit 1, one line naming TRADEFLOW_EXECUTION_LEDGER (password hidden), and
    nothing consumed."""
    stack, nc = await make_stack(services=("recorder",))
    with psycopg.connect(pg_url, autocommit=True) as conn:   # as a newer tradeflow would have left it
        conn.execute("CREATE TABLE tradeflow_schema (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute("INSERT INTO tradeflow_schema VALUES ('fills', 2)")
    secret = pg_url.replace("postgres@", "postgres:s3cret@")
    env = stack.service_proc("execution").env
    for bad, says in [("postgresql://tradeflow:s3cret@db.example/ledger?nonsense=1", "is not a PostgreSQL URL"),
                      (f"postgresql://tradeflow:s3cret@127.0.0.1:{free_port()}/ledger", "cannot connect"),
                      (secret, "newer than this code's 1")]:
        proc = await asyncio.create_subprocess_exec(*stack.service_proc("execution").argv, env=env | {LEDGER: bad},
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        errors = [line for line in err.decode().splitlines() if line.startswith("Error:")]
        assert proc.returncode == 1 and len(errors) == 1, err.decode()[-2000:]
        assert errors[0].startswith(f"Error: {LEDGER}") and says in errors[0] and "s3cret" not in errors[0], errors
        assert "Traceback" not in err.decode()
    info = await nc.jsm().consumer_info(PIPELINE_STREAM, "execution")
    assert info.delivered.stream_seq == 0 and info.ack_floor.stream_seq == 0
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT to_regclass('fills')").fetchone() == (None,)   # nothing written
