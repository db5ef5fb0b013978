"""What a consumer's filter costs nats-server, by the number of symbols: one server, one stream shaped like
PIPELINE (nine bars in ten, the other stages sharing the rest), drained by a pull consumer with no filter,
with the bars' filter (strategy's), and with three stage filters (risk's). nats-server's CPU is read from
/proc before and after each drain.

    .venv/bin/python bench/filter_cost.py [--messages 25000] [--symbols 5,500]

nats-server finds a filtered consumer's next message in a block by going through the subjects the block
holds that a filter matches (filestore's firstMatching / firstMatchingMulti) whenever the block has more
messages left than subjects; an unfiltered consumer takes the next sequence. So the cost grows with the
number of symbols for any filtered consumer that is behind, and most with several filters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nats
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from services.ops.supervisor import free_port, nats_server_binary, wait_port  # noqa: E402

STAGES = ["data_ready", "signals_ready", "validated_ready", "approved_ready", "executed_ready", "rejected"]
FILTERS = {"none": [], "bars (strategy)": ["data_ready.>"],
           "three stages (risk)": ["data_ready.>", "validated_ready.>", "executed_ready.>"]}


def server_cpu(pid: int) -> float:
    """User and system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def subject(i: int, symbols: int) -> str:
    stage = STAGES[0] if i % 10 else STAGES[1 + (i // 10) % (len(STAGES) - 1)]
    return f"{stage}.S{i % symbols}"


async def drain(symbols: int, messages: int) -> dict[str, float]:
    """nats-server CPU-s per 1,000 messages delivered, per filter."""
    port = free_port()
    with tempfile.TemporaryDirectory() as store:
        server = subprocess.Popen([nats_server_binary(), "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_port("127.0.0.1", port, 20, None)
            nc = await nats.connect(f"nats://127.0.0.1:{port}", connect_timeout=5)
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="P", subjects=[f"{s}.>" for s in STAGES]))
            acks = [await js.publish_async(subject(i, symbols), b"x" * 200) for i in range(messages)]
            await asyncio.gather(*acks)
            costs = {}
            for label, filters in FILTERS.items():
                durable = f"c{len(costs)}"
                await js.add_consumer("P", ConsumerConfig(
                    durable_name=durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=20_000,
                    filter_subject=filters[0] if len(filters) == 1 else None,
                    filter_subjects=filters if len(filters) > 1 else None))
                want = (await js.consumer_info("P", durable)).num_pending
                sub = await js.pull_subscribe_bind(durable, "P")
                before, got = server_cpu(server.pid), 0
                while got < want:
                    batch = await sub.fetch(256, timeout=5)
                    for msg in batch:
                        await msg.ack()
                    got += len(batch)
                await nc.flush()
                costs[label] = (server_cpu(server.pid) - before) / got * 1000
            await nc.close()
            return costs
        finally:
            server.terminate()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=25_000)
    parser.add_argument("--symbols", default="5,500", help="comma-separated")
    args = parser.parse_args()
    print(f"nats-server CPU-s per 1,000 messages a consumer drains ({args.messages:,} in the stream)\n")
    print("| symbols | " + " | ".join(FILTERS) + " |")
    print("|---:|" + "---:|" * len(FILTERS))
    for symbols in (int(s) for s in args.symbols.split(",")):
        costs = asyncio.run(drain(symbols, args.messages))
        print(f"| {symbols} | " + " | ".join(f"{costs[label]:.3f}" for label in FILTERS) + " |")


if __name__ == "__main__":
    main()
