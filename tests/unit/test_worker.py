"""The runtime's batch path without servers: the worker's `process()` driven with nats-py's own `Msg`
objects over a connection that records what they send (ack, nak and its delay, term, in progress), a
publisher that can fail, and a dedup registry that can be away."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from nats.aio.msg import Msg

from contracts.codec import Incoming, decode
from contracts.errors import Fatal, RedisUnavailable, Rejected, Transient
from contracts.events import SignalGenerated, SignalValidated
from services.runtime.agent import Agent, Options
from services.runtime.config import RuntimeSettings
from services.runtime.metrics import Metrics
from services.runtime.publish import envelope_out
from services.runtime.worker import Worker

TS = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)


class Wire:
    """The connection a message's ack goes out on: what each delivery was answered with."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes = b"", **_) -> None:
        self.sent.append((subject, payload))

    def answers(self) -> dict[int, list[str]]:
        """Stream sequence -> the answers sent for it, in order ("+ACK", "-NAK 0.2", "+TERM", "+WPI")."""
        out: dict[int, list[str]] = {}
        for reply, payload in self.sent:
            seq = int(reply.split(".")[5])
            text = payload.decode() or "+ACK"   # an empty answer is an ack
            if text.startswith("-NAK"):
                delay = json.loads(text[4:] or "{}").get("delay")
                text = f"-NAK {delay / 1e9:g}" if delay else "-NAK"
            out.setdefault(seq, []).append(text)
        return out


class Published:
    """The publisher: outputs made durable, and how many more calls fail first with a Transient."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.out: list = []
        self.calls = 0

    async def publish(self, batch) -> list:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise Transient("nats-server is away")
        self.out += batch
        return []


class Dedup:
    """The dedup registry: what is marked done, and whether Redis answers."""

    def __init__(self, done: set[str] | None = None, away: bool = False) -> None:
        self.done = set(done or ())
        self.away = away
        self.marked: list[list[str]] = []

    async def seen(self, ids) -> set[str]:
        if self.away:
            raise RedisUnavailable("redis is away")
        return {i for i in ids if i in self.done}

    async def mark(self, ids) -> None:
        if self.away:
            raise RedisUnavailable("redis is away")
        self.marked.append(list(ids))
        self.done.update(ids)


def signal(symbol: str, strength: float = 0.5) -> SignalGenerated:
    return SignalGenerated(symbol=symbol, ts=TS, side="buy", strength=strength, price=10.0, strategy="t")


def message(wire: Wire, seq: int, event, *, attempt: int = 1, event_id: str | None = None) -> Msg:
    """A delivery of `event` at stream sequence `seq`, as JetStream sends it."""
    out = envelope_out(event, service="test", event_id=event_id or f"in-{seq}", trace_id="t" * 32, causation_id=None,
                       now=TS)
    reply = f"$JS.ACK.PIPELINE.tally.{attempt}.{seq}.{seq}.{int(TS.timestamp() * 1e9)}.0"
    return Msg(_client=wire, subject=out.subject, reply=reply, data=out.body, headers=out.headers)  # type: ignore[arg-type]


class Counting(Agent):
    """Validates signals and counts each symbol's, as state; raises on a strength of 0.99 after counting it
    (a handler that fails half-way), and rejects a strength of 0 as bad input."""

    name = "tally"
    consumes = ("signals_ready.>",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.calls = 0

    def handle(self, incoming: Incoming, now: datetime):
        self.calls += 1
        sig = incoming.event
        self.counts = {**self.counts, sig.symbol: self.counts.get(sig.symbol, 0) + 1}
        if sig.strength == 0.99:
            raise RuntimeError("feature store returned garbage")
        if sig.strength == 0:
            raise Rejected("a signal of no strength")
        return [SignalValidated(symbol=sig.symbol, ts=sig.ts, side=sig.side, strength=sig.strength, price=sig.price,
                                strategy=sig.strategy)]

    def snapshot(self):
        return self.counts

    def restore(self, snapshot) -> None:
        self.counts = snapshot


class Stateful(Counting):
    options = Options(stateful=True)


class WaitsForRedis(Counting):
    options = Options(stateful=True, wait_for_dedup=True)


def worker(agent: Agent, tmp_path, *, publisher=None, dedup=None, **settings) -> Worker:
    config = RuntimeSettings(data_dir=str(tmp_path), max_deliver=3, backoff=[0.2, 0.5], **settings)
    return Worker(agent, object(), publisher=publisher or Published(), dedup=dedup or Dedup(),  # type: ignore[arg-type]
                  metrics=Metrics(agent.name), settings=config)


async def test_a_batch_is_handled_published_and_acked_in_stream_order(tmp_path):
    wire, published, dedup = Wire(), Published(), Dedup()
    w = worker(Counting(), tmp_path, publisher=published, dedup=dedup)
    await w.process([message(wire, seq, signal(s)) for seq, s in enumerate(["A", "B", "A"], 1)])
    assert wire.answers() == {1: ["+ACK"], 2: ["+ACK"], 3: ["+ACK"]}
    assert [out.subject for out in published.out] == ["validated_ready.A", "validated_ready.B", "validated_ready.A"]
    assert [out.headers["ce-causationid"] for out in published.out] == ["in-1", "in-2", "in-3"]
    await w._write_kept_marks()
    assert dedup.done == {"in-1", "in-2", "in-3"}


async def test_a_handler_error_is_nakked_with_the_backoff_and_dead_lettered_at_the_last_delivery(tmp_path):
    wire, published = Wire(), Published()
    w = worker(Counting(), tmp_path, publisher=published)
    await w.process([message(wire, 1, signal("A", 0.99), attempt=1)])
    await w.process([message(wire, 2, signal("A", 0.99), attempt=2)])
    assert wire.answers() == {1: ["-NAK 0.2"], 2: ["-NAK 0.5"]}
    assert published.out == []
    await w.process([message(wire, 3, signal("A", 0.99), attempt=3)])   # max_deliver: the last
    assert wire.answers()[3] == ["+TERM"]
    [letter] = published.out
    assert letter.subject == "dlq.tally.signals_ready.A"
    assert "RuntimeError: feature store returned garbage" in letter.headers["tradeflow-dlq-error"]
    assert letter.headers["tradeflow-dlq-reason"] == "max_deliveries"


async def test_a_rejected_input_is_dead_lettered_at_once_and_the_rest_go_on(tmp_path):
    wire, published = Wire(), Published()
    w = worker(Counting(), tmp_path, publisher=published)
    await w.process([message(wire, 1, signal("A")), message(wire, 2, signal("A", 0.0)), message(wire, 3, signal("B"))])
    assert wire.answers() == {1: ["+ACK"], 2: ["+TERM"], 3: ["+ACK"]}
    assert [out.subject for out in published.out] == ["validated_ready.A", "validated_ready.B",
                                                      "dlq.tally.signals_ready.A"]
    assert published.out[2].headers["tradeflow-dlq-reason"] == "rejected"


async def test_a_stateful_handler_that_fails_half_way_leaves_no_trace_in_the_state(tmp_path):
    """All or nothing: the input it failed on did not happen; those around it did, once each."""
    wire, published = Wire(), Published()
    agent = Stateful()
    w = worker(agent, tmp_path, publisher=published)
    await w.process([message(wire, 1, signal("A")), message(wire, 2, signal("A", 0.99)), message(wire, 3, signal("A")),
                     message(wire, 4, signal("B"))])
    assert agent.counts == {"A": 2, "B": 1}
    assert wire.answers() == {1: ["+ACK"], 2: ["-NAK 0.2"], 3: ["+ACK"], 4: ["+ACK"]}
    assert [out.headers["ce-causationid"] for out in published.out] == ["in-1", "in-3", "in-4"]
    assert w.tracking.holds(3) and not w.tracking.holds(2)


async def test_a_transient_publish_failure_rolls_back_and_retries_in_place_acking_nothing_until_it_lands(
        tmp_path, monkeypatch):
    wire, published = Wire(), Published(fail=2)
    agent = Stateful()
    w = worker(agent, tmp_path, publisher=published)
    sleeps: list[float] = []

    async def pause(seconds, stopping) -> None:
        sleeps.append(seconds)
        answers = wire.answers()
        assert answers and all(set(a) == {"+WPI"} for a in answers.values()), "answered before the outputs were durable"

    monkeypatch.setattr("services.runtime.worker.pause", pause)
    await w.process([message(wire, 1, signal("A")), message(wire, 2, signal("B"))])
    assert published.calls == 3 and len(sleeps) == 2
    assert agent.counts == {"A": 1, "B": 1}   # rolled back twice, handled once in the end
    assert [out.subject for out in published.out] == ["validated_ready.A", "validated_ready.B"]
    assert {seq: answers[-1] for seq, answers in wire.answers().items()} == {1: "+ACK", 2: "+ACK"}


@pytest.mark.parametrize("agent, acked, kept", [
    (Counting, True, 0),       # stateless: handled (a repeat only re-publishes ids the stream drops), marks later
    (Stateful, True, 2),       # stateful: its tracking record says what is done; the marks wait for Redis
])
async def test_with_redis_away_an_agent_that_need_not_wait_goes_on_and_keeps_its_marks(tmp_path, agent, acked, kept):
    wire, published, dedup = Wire(), Published(), Dedup(away=True)
    w = worker(agent(), tmp_path, publisher=published, dedup=dedup)
    await w.process([message(wire, 1, signal("A")), message(wire, 2, signal("B"))])
    assert wire.answers() == {1: ["+ACK"], 2: ["+ACK"]} and len(published.out) == 2
    assert len(w.unmarked) == 2
    dedup.away = False
    await w._write_kept_marks()
    assert dedup.done == {"in-1", "in-2"} and not w.unmarked


async def test_with_redis_away_an_agent_that_waits_for_it_acks_no_output_until_it_is_back(tmp_path, monkeypatch):
    wire, published, dedup = Wire(), Published(), Dedup(away=True)
    w = worker(WaitsForRedis(), tmp_path, publisher=published, dedup=dedup)
    tries = []

    async def pause(seconds, stopping) -> None:
        tries.append(seconds)
        assert not [a for a in wire.answers().values() if "+ACK" in a], "acked with Redis away"
        if len(tries) == 3:
            dedup.away = False

    monkeypatch.setattr("services.runtime.worker.pause", pause)
    await w.process([message(wire, 1, signal("A"))])
    assert len(tries) == 3 and dedup.done == {"in-1"}
    assert wire.answers()[1][-1] == "+ACK"
    assert len({out.headers["ce-id"] for out in published.out}) == 1   # published again on each try: one id


async def test_a_stateless_agent_acks_what_redis_says_is_done_without_handling_it(tmp_path):
    wire, published = Wire(), Published()
    agent = Counting()
    w = worker(agent, tmp_path, publisher=published, dedup=Dedup(done={"in-1"}))
    await w.process([message(wire, 1, signal("A"), attempt=2), message(wire, 2, signal("B"))])
    assert wire.answers() == {1: ["+ACK"], 2: ["+ACK"]} and agent.calls == 1
    assert [out.subject for out in published.out] == ["validated_ready.B"]


async def test_the_input_the_last_run_crashed_on_is_tried_last_and_alone(tmp_path):
    """A redelivered input is named the suspect while it is handled; if the process dies then, the next run
    handles its neighbours first, and it alone at the end."""
    wire, published = Wire(), Published()
    first = worker(Counting(), tmp_path, publisher=published)
    first._mark_suspect(_incoming(wire, 2, signal("B"), attempt=2))
    assert first.suspect_file.read_text() == "in-2"   # as the process died with it in hand

    agent = Stateful()
    seen = []
    handle = agent.handle
    agent.handle = lambda inc, now: seen.append(inc.id) or handle(inc, now)  # type: ignore[method-assign]
    again = worker(agent, tmp_path, publisher=published)
    assert again.suspect == "in-2"
    await again.process([message(wire, 1, signal("A"), attempt=2), message(wire, 2, signal("B"), attempt=2),
                         message(wire, 3, signal("C"), attempt=2)])
    assert seen == ["in-1", "in-3", "in-2"]
    assert not again.suspect_file.exists()   # it was handled: no longer a suspect


async def test_a_message_twice_in_one_batch_is_folded_once(tmp_path):
    """A late answer to a pull given up on, then the same message redelivered: both in one fetch."""
    wire, published = Wire(), Published()
    agent = Stateful()
    w = worker(agent, tmp_path, publisher=published)
    await w.process([message(wire, 1, signal("A")), message(wire, 2, signal("B")),
                     message(wire, 1, signal("A"), attempt=2)])
    assert agent.counts == {"A": 1, "B": 1}
    assert [out.headers["ce-causationid"] for out in published.out] == ["in-1", "in-2"]   # in stream order
    assert wire.answers() == {1: ["+ACK", "+ACK"], 2: ["+ACK"]}


async def test_a_fatal_effect_stops_the_worker_with_nothing_acked(tmp_path):
    """A recorder that lost its writer fence: retrying in place would hold the batch for ever, so the worker
    stops (the service exits 70) and the batch waits, unacked, for whoever holds the fence."""
    class LostFence(Counting):
        async def record(self) -> None:
            raise Fatal("another recorder holds the store")

    wire, published = Wire(), Published()
    w = worker(LostFence(), tmp_path, publisher=published)
    with pytest.raises(Fatal):
        await w.process([message(wire, 1, signal("A")), message(wire, 2, signal("B"))])
    assert not [a for a in wire.answers().values() if "+ACK" in a or any(x.startswith("-NAK") for x in a)]
    assert published.out == []


def _incoming(wire: Wire, seq: int, event, attempt: int) -> Incoming:
    msg = message(wire, seq, event, attempt=attempt)
    return decode(msg.subject, msg.data, msg.headers, sequence=seq, attempt=attempt)
