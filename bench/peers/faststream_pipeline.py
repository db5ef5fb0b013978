"""The framework peer: tradeflow's hops written idiomatically on FastStream 0.7.8 (NATS JetStream).

One process per hop, on the same stream, subjects and consumer filters as the raw ceiling
(bench/baselines/raw.py) and with the same hop logic (bench/hops.py), so both pipelines carry the
same events and only what moves them differs. Each hop is a `FastStream` app around one
`NatsBroker` with one subscriber:

- one durable pull consumer `fs-{HOP}` on the existing stream PIPELINE, filtering on all of the
  hop's subjects at once with `ConsumerConfig(filter_subjects=FILTERS[HOP])` (the server's
  multi-filter consumer: one subscriber per subject would need a consumer each, and the bench
  could not wait on one name), with raw's ack wait and ack-pending limit. FastStream creates the
  consumer when it is missing and binds to it as it stands when it exists: a changed config here
  does not reach an existing consumer. The stream is `JStream("PIPELINE", declare=False)`: a
  declared stream is added on start-up with FastStream's defaults and, when one exists with
  another config, *updated* to them (its duplicate window, which dedup relies on, to 0);
- a batch pull subscription, `PullSub(batch_size=256, timeout=BATCH_WAIT, batch=True)`: the
  handler gets a batch in stream order and handles its messages one after the other, as raw does.
  FastStream's other pull mode (`batch=False`) fetches as many but runs one task per message, and
  those reach the handler out of order: the strategy's windows reject a symbol's bars out of
  order, and the nacked bars come back later still out of order, without end. A batch subscriber
  keeps fetching until the batch is full or BATCH_WAIT has passed, so a partial batch waits that
  long at each hop (raw handles whatever a fetch returns);
- a pass-through decoder, so the handler gets nats-py's messages as they are (subject, data, and
  the stream sequence that seeds the out id, from their metadata) where FastStream's default
  decoder would `json.loads` every body for the handler to throw away;
- outputs through a publisher bound to the stream, `Nats-Msg-Id` = the out id in the headers
  (FastStream's publishers have no message-id argument; they add `content-type` and
  `correlation_id` headers of their own), a batch's publishes awaited together, each for its
  PubAck (within PUBACK_TIMEOUT, raw's; FastStream's default is 0.5 s);
- `ack_policy=NACK_ON_ERROR`: FastStream acks the batch's messages, one ack each, when the handler
  returns, so after every output's PubAck, and naks them when it raises, for redelivery (the
  default, REJECT_ON_ERROR, would `term` them and lose the batch).

One fix to FastStream 0.7.8 itself: its pull loops stop a fetch on `nats.errors.TimeoutError`,
but nats-py's `fetch` (2.16 here) also raises a bare `asyncio.TimeoutError` when the time it was
given runs out between its two pull requests, as the last fetch of a batch's window often does.
The loop's task dies with the messages it had collected, FastStream restarts it, and those
messages come back only after the consumer's ack wait (30 s). The fix has the loops catch every
`asyncio.TimeoutError` (which `nats.errors.TimeoutError` subclasses), as raw does.

FastStream's app handles SIGINT and SIGTERM itself (handlers on the running loop): it stops the
broker, whose subscribers let a batch in hand finish (up to the broker's `graceful_timeout`), and
returns. uvloop runs the loop when it is importable.

    python bench/peers/faststream_pipeline.py HOP NATS_URL      (HOP: strategy, quant, risk, execution, audit)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import faststream.nats.subscriber.usecases.stream_pull_subscriber as pull_subscriber
from faststream import FastStream
from faststream.message import StreamMessage
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.params import NoCast
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as ConsumerAckPolicy
from nats.js.api import ConsumerConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/: the hops' logic, shared with raw.py

from hops import FILTERS, Hop  # noqa: E402

BATCH = 256
BATCH_WAIT = 0.05      # seconds a batch may take to fill before its messages are handled anyway
PUBACK_TIMEOUT = 10.0  # seconds for a batch's outputs to be acknowledged by JetStream
OUTPUTS = {"strategy": "signals_ready", "quant": "validated_ready", "risk": "approved_ready",
           "execution": "executed_ready"}   # the audit hop publishes nothing

pull_subscriber.TimeoutError = asyncio.TimeoutError   # the fix above: nats-py's timeouts, bare or not


async def undecoded(msg: StreamMessage[list[Msg]]) -> list[Msg]:
    """Hand the handler the batch's nats-py messages as they are: Hop.handle decodes with msgspec."""
    return msg.raw_message


def app(name: str, url: str) -> FastStream:
    broker = NatsBroker(url, name=f"fs-{name}")
    stream = JStream("PIPELINE", declare=False)
    durable = f"fs-{name}"
    consumer = ConsumerConfig(durable_name=durable, ack_policy=ConsumerAckPolicy.EXPLICIT,
                              filter_subjects=FILTERS[name], max_ack_pending=4096, ack_wait=30)
    outputs = broker.publisher(f"{OUTPUTS.get(name, name)}.*", stream=stream, timeout=PUBACK_TIMEOUT,
                               include_in_schema=name in OUTPUTS)   # each publish names its symbol's subject
    hop = Hop(name)

    @broker.subscriber(config=consumer, durable=durable, stream=stream,
                       pull_sub=PullSub(batch_size=BATCH, timeout=BATCH_WAIT, batch=True),
                       decoder=undecoded, ack_policy=AckPolicy.NACK_ON_ERROR)
    async def handle(batch: NoCast[list[Msg]]) -> None:
        out = [o for m in batch for o in hop.handle(m.subject, m.data, m.metadata.sequence.stream)]
        await asyncio.gather(*(outputs.publish(body, subject, headers={"Nats-Msg-Id": out_id})
                               for subject, out_id, body in out))

    return FastStream(broker)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(app(sys.argv[1], sys.argv[2]).run())
    else:
        uvloop.run(app(sys.argv[1], sys.argv[2]).run())
