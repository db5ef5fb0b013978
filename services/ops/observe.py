"""Reading a running pipeline's state from JetStream: counts per stage, consumer lag, drain."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

import orjson
from nats.js import JetStreamManager
from nats.js.errors import NotFoundError

from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM, stage_of
from services.runtime.journey import oldest_waiting, overdue
from services.runtime.micro import micro_services
from services.runtime.topology import consumed


async def subject_counts(jsm: JetStreamManager, stream: str = PIPELINE_STREAM) -> dict[str, int]:
    """Messages held per subject."""
    try:
        info = await jsm.stream_info(stream, subjects_filter=">")
    except NotFoundError:
        return {}
    return dict(info.state.subjects or {})


def stage_totals(counts: dict[str, int]) -> Counter:
    """Per-subject counts summed by stage (first token; rejected.<stage> kept apart)."""
    totals: Counter = Counter()
    for subject, n in counts.items():
        totals[stage_of(subject, by_origin=True)] += n
    return totals


async def stream_messages(nc, stream: str, subject: str = ">") -> list:
    """Every message of `stream` on `subject`, oldest first (an ephemeral ordered read)."""
    jsm = nc.jsm()
    info = await jsm.stream_info(stream, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())
    if total == 0:
        return []
    sub = await nc.jetstream().subscribe(subject, stream=stream, ordered_consumer=True)
    out = []
    try:
        while len(out) < total:
            out.append(await sub.next_msg(timeout=5))
        return out
    finally:
        await sub.unsubscribe()


async def rejections(nc) -> dict[str, int]:
    """Rejections in the stream counted by `<stage>.<rule>`."""
    counts: Counter = Counter()
    for msg in await stream_messages(nc, PIPELINE_STREAM, "rejected.>"):
        try:
            body = orjson.loads(msg.data)
            counts[f"{body['stage']}.{body['rule']}"] += 1
        except (orjson.JSONDecodeError, KeyError, TypeError):
            counts["unreadable"] += 1
    return dict(sorted(counts.items()))


async def dead_letters(jsm: JetStreamManager) -> int:
    """Messages in the DLQ stream."""
    try:
        return (await jsm.stream_info(DLQ_STREAM)).state.messages
    except NotFoundError:
        return 0


async def slowest_floor(jsm: JetStreamManager, names: Sequence[str]) -> int:
    """The lowest ack floor (a stream sequence) among the named consumers: all before it is processed."""
    floors = []
    for name in names:
        try:
            floors.append((await jsm.consumer_info(PIPELINE_STREAM, name)).ack_floor.stream_seq)
        except NotFoundError:
            floors.append(0)
    return min(floors, default=0)


async def consumers_idle(jsm: JetStreamManager, names: Sequence[str]) -> bool:
    """True when every named consumer has nothing pending and nothing awaiting an ack."""
    for name in names:
        try:
            info = await jsm.consumer_info(PIPELINE_STREAM, name)
        except NotFoundError:
            return False
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def wait_drained(jsm: JetStreamManager, consumers: Sequence[str], timeout: float,
                       settle: float = 0.5, progress: Callable[[int, int], None] | None = None) -> float:
    """Wait until the stream stops growing and every consumer is idle; seconds waited. TimeoutError if not.
    `progress(done, total)`, if given, hears how far the slowest consumer has got (its ack floor) of the
    stream's last sequence, at every look."""
    start = deadline = time.monotonic()
    deadline += timeout
    last_seq = -1
    while time.monotonic() < deadline:
        seq = (await jsm.stream_info(PIPELINE_STREAM)).state.last_seq
        if progress is not None:
            progress(await slowest_floor(jsm, consumers), seq)
        if seq == last_seq and await consumers_idle(jsm, consumers):
            return time.monotonic() - start
        last_seq = seq
        await asyncio.sleep(settle)
    raise TimeoutError(f"pipeline not drained after {timeout:.0f}s")


async def status(nc, timeout: float = 0.5, journey_timeout: float = 300.0) -> dict:
    """What `tradeflow status` shows: services (micro INFO and STATS), consumers (with how long their oldest
    waiting event has waited, and whether that is past `journey_timeout`), streams, DLQ depth by service."""
    jsm = nc.jsm()
    infos = await micro_services(nc, timeout, "INFO")
    stats = {s.get("id"): s for s in await micro_services(nc, timeout, "STATS")}
    services = []
    for info in infos:
        meta = info.get("metadata") or {}
        data = next((e.get("data") for e in (stats.get(info.get("id")) or {}).get("endpoints") or []
                     if e.get("data")), None) or {}
        services.append({"name": info.get("name"), "id": info.get("id"), "version": info.get("version"),
                         "consumer": meta.get("consumer") or None, "http_port": meta.get("http_port"),
                         "pid": meta.get("pid"), "partition": meta.get("partition") or None,
                         "messages_in": data.get("messages_in"), "messages_out": data.get("messages_out"),
                         "dead_letters": data.get("dead_letters")})
    consumers = []
    try:
        for c in await jsm.consumers_info(PIPELINE_STREAM):
            waiting = await oldest_waiting(jsm, PIPELINE_STREAM, c)
            consumers.append({"name": c.name, "pending": c.num_pending or 0, "ack_pending": c.num_ack_pending or 0,
                              "redelivered": c.num_redelivered or 0, "paused": bool(getattr(c, "paused", False)),
                              "consumes": ",".join(consumed(c.config)),
                              "oldest_waiting_s": round(waiting.age(), 1) if waiting else 0.0,
                              "oldest_waiting_seq": waiting.seq if waiting else None,
                              "overdue": overdue(waiting, journey_timeout)})
    except NotFoundError:
        pass
    streams = []
    for name in (PIPELINE_STREAM, DLQ_STREAM):
        try:
            info = await jsm.stream_info(name)
        except NotFoundError:
            continue
        streams.append({"name": name, "messages": info.state.messages, "bytes": info.state.bytes,
                        "first_seq": info.state.first_seq, "last_seq": info.state.last_seq,
                        "consumers": info.state.consumer_count})
    dlq = Counter()
    for subject, n in (await subject_counts(jsm, DLQ_STREAM)).items():
        dlq[subject.split(".")[1] if subject.count(".") >= 1 else subject] += n
    return {"services": services, "consumers": sorted(consumers, key=lambda c: c["name"]), "streams": streams,
            "dead_letters": dict(sorted(dlq.items())), "journey_timeout": journey_timeout}
