"""Streams and consumers, declared idempotently: missing -> created, drifted -> updated.

`provision()` (what `tradeflow init` runs, with the operator's rights, before the services start)
declares the streams and every durable a deployment runs: each consuming service's (or each of its
replicas') on PIPELINE and its advisories durable on ADVISORIES. It first reads what is there and
stops, changing nothing, if a stream or consumer was configured with settings tradeflow cannot
update (another retention or storage, subjects that are not tradeflow's, another ack policy). The
services themselves declare nothing: their NATS users may not (services/runtime/permissions.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamManager
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError, ServiceUnavailableError

from contracts.errors import ConfigError
from contracts.subjects import DATA_READY, DLQ_STREAM, PIPELINE_STREAM, PIPELINE_SUBJECTS
from services.runtime.advisories import advisory_stream
from services.runtime.config import RuntimeSettings
from services.runtime.connect import PermissionWatch

log = logging.getLogger(__name__)


def pipeline_stream(settings: RuntimeSettings) -> StreamConfig:
    """PIPELINE: every stage subject and rejections, file storage, bounded by age."""
    return StreamConfig(
        name=PIPELINE_STREAM,
        subjects=list(PIPELINE_SUBJECTS),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.stream_max_age,
        duplicate_window=settings.duplicate_window,
        num_replicas=settings.stream_replicas,
        description="tradeflow pipeline events",
    )


def dlq_stream(settings: RuntimeSettings) -> StreamConfig:
    """DLQ: dead letters under dlq.<service>.<original subject>, kept long."""
    return StreamConfig(
        name=DLQ_STREAM,
        subjects=["dlq.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.dlq_max_age,
        # a day: a message copied by its worker and again from an advisory read late is stored once
        duplicate_window=min(max(settings.duplicate_window, 24 * 3600.0), settings.dlq_max_age),
        num_replicas=settings.stream_replicas,
        description="tradeflow dead letters",
    )


def stream_filters(filters: list[str], stream_subjects: list[str] = PIPELINE_SUBJECTS) -> list[str]:
    """A durable's filters: none when they are the stream's own subjects (the recorder's) or several stages,
    bars among them (risk, execution, audit: bars are nine events in ten), whose worker then acks the
    other stages' events without handling them (Worker.process). nats-server finds a filtered consumer's
    next message in a block by going through every subject the block holds that a filter matches
    (filestore's firstMatchingMulti), where an unfiltered one takes the next sequence: with 500 symbols,
    draining a backlog cost the server 0.100 CPU-s per 1,000 messages through three stage filters, 0.042
    through the bars' one (strategy's, kept: the two in ten it would pass over cost more at 5 symbols)
    and 0.013 unfiltered (bench/filter_cost.py). A partitioned replica's filters name its symbols and stay."""
    if sorted(filters) == sorted(stream_subjects) or (len(filters) > 1 and f"{DATA_READY}.>" in filters):
        return []
    return list(filters)


CONSUMES = "tradeflow_consumes"   # a durable's metadata: the subjects its service takes (its filters may be none)


def consumer_config(name: str, filters: list[str], settings: RuntimeSettings) -> ConsumerConfig:
    """A service's durable pull consumer, with retries bounded explicitly; its metadata names what its
    service takes (`nats consumer info` shows it), its filters may be none (stream_filters)."""
    consumes = ",".join(filters)
    filters = stream_filters(filters)
    return ConsumerConfig(
        durable_name=name,
        name=name,
        description=f"tradeflow {name}",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
        filter_subjects=filters if len(filters) > 1 else None,
        filter_subject=filters[0] if len(filters) == 1 else None,
        metadata={CONSUMES: consumes},
    )


def consumed(config: ConsumerConfig) -> list[str]:
    """The subjects a durable's service takes: its metadata's, else its filters, else everything."""
    named = (config.metadata or {}).get(CONSUMES)
    return named.split(",") if named else _filters(config) or [">"]


class ProvisionError(ConfigError):
    """A stream or consumer is configured in a way tradeflow cannot update; nothing was changed."""


def _filters(c: ConsumerConfig) -> list[str]:
    return sorted(c.filter_subjects or ([c.filter_subject] if c.filter_subject else []))


def stream_problems(have: StreamConfig, want: StreamConfig) -> list[str]:
    """What makes an existing stream one tradeflow cannot take over: settings an update cannot change,
    or subjects that are not tradeflow's (someone else's stream of that name). Subjects tradeflow has
    added since (a stream an older version made) are not a problem: the update adds them."""
    problems = []
    for field in ("retention", "storage"):
        if getattr(have, field) != getattr(want, field):
            problems.append(f"{field} is {getattr(have, field)}, tradeflow needs {getattr(want, field)}")
    if foreign := sorted(set(have.subjects or []) - set(want.subjects or [])):
        problems.append(f"it holds subjects that are not tradeflow's: {', '.join(foreign[:5])}")
    return [f"stream {want.name}: {p}" for p in problems]


def stream_drifted(have: StreamConfig, want: StreamConfig) -> bool:
    """Whether an existing (compatible) stream needs the update that brings it to `want`."""
    wanted = (sorted(want.subjects or []), want.max_age, want.duplicate_window, want.num_replicas or 1)
    current = (sorted(have.subjects or []), have.max_age, have.duplicate_window, have.num_replicas or 1)
    return wanted != current


def consumer_problems(stream: str, have: ConsumerConfig, want: ConsumerConfig) -> list[str]:
    """What an update cannot change on an existing durable."""
    problems = []
    for field in ("ack_policy", "deliver_policy"):
        if getattr(have, field) != getattr(want, field):
            problems.append(f"{field} is {getattr(have, field)}, tradeflow needs {getattr(want, field)}")
    return [f"consumer {stream}/{want.durable_name}: {p}" for p in problems]


def consumer_drifted(have: ConsumerConfig, want: ConsumerConfig) -> bool:
    """Whether an existing (compatible) durable needs the update that brings it to `want`."""
    def unlimited(value: int | None) -> int:   # the server says -1 for a limit not given
        return -1 if value in (None, 0) else value

    return (
        _filters(have) != _filters(want)
        or (have.metadata or {}).get(CONSUMES) != (want.metadata or {}).get(CONSUMES)
        or unlimited(have.max_deliver) != unlimited(want.max_deliver)
        or have.max_ack_pending != want.max_ack_pending
        or abs((have.ack_wait or 0) - (want.ack_wait or 0)) > 1e-6
    )


async def provision(jsm: JetStreamManager, settings: RuntimeSettings,
                    consumers: Sequence[tuple[str, ConsumerConfig]] = ()) -> list[str]:
    """Declare the three streams and `consumers` ((stream, config) pairs): read everything first, raise
    ProvisionError with every problem and change nothing if one is incompatible, else create what is
    missing and update what drifted. What it did, one line a change."""
    streams = [pipeline_stream(settings), dlq_stream(settings), advisory_stream(settings)]
    plan: list[tuple[str, Any, Callable[..., Awaitable[Any]]]] = []   # (what, config or (stream, config), call)
    problems: list[str] = []
    for config in streams:
        assert config.name is not None
        try:
            have = (await jsm.stream_info(config.name)).config
        except NotFoundError:
            plan.append((f"stream {config.name} created", config, jsm.add_stream))
            continue
        problems += stream_problems(have, config)
        if stream_drifted(have, config):
            plan.append((f"stream {config.name} updated", config, jsm.update_stream))
    for stream, wanted in consumers:
        found, change = await consumer_change(jsm, stream, wanted)
        problems += found
        if change:   # CONSUMER.CREATE creates it, or with an existing name updates it (server >= 2.10)
            plan.append((f"consumer {stream}/{wanted.durable_name or ''} {change}", (stream, wanted), jsm.add_consumer))
    if problems:
        raise ProvisionError("cannot provision, nothing changed: " + "; ".join(problems))
    for what, config, call in plan:
        await (call(*config) if isinstance(config, tuple) else call(config))
        log.info(what)
    return [what for what, _, _ in plan]


async def ensure_streams(jsm: JetStreamManager, settings: RuntimeSettings) -> None:
    """Create or update PIPELINE, DLQ and ADVISORIES (ProvisionError if one is not tradeflow's)."""
    await provision(jsm, settings)


async def consumer_change(jsm: JetStreamManager, stream: str, wanted: ConsumerConfig) -> tuple[list[str], str | None]:
    """What declaring the durable `wanted` on `stream` takes: the problems an update cannot solve (none if it
    is missing), and "created" if it is missing, "updated" if its settings drifted, else None."""
    try:
        held = (await jsm.consumer_info(stream, wanted.durable_name or "")).config
    except NotFoundError:
        return [], "created"
    return consumer_problems(stream, held, wanted), "updated" if consumer_drifted(held, wanted) else None


async def ensure_consumer(jsm: JetStreamManager, stream: str, config: ConsumerConfig) -> None:
    """Create the durable if missing, update it if its settings drifted, else leave it."""
    assert config.durable_name
    problems, change = await consumer_change(jsm, stream, config)
    if problems:
        raise ProvisionError("; ".join(problems))
    if change:
        await jsm.add_consumer(stream, config)
        log.info(f"consumer {change}", extra={"consumer": config.durable_name})


NOT_YET = (NatsTimeout, asyncio.TimeoutError, NoRespondersError, ServiceUnavailableError)
_WAIT_LOG_EVERY = 10.0   # seconds between "still waiting for tradeflow init" lines


async def _api(jsm: JetStreamManager, call, subject: str, watch: PermissionWatch | None):
    """Await a JetStream API call; ConfigError at once, naming the subject, if the server refuses it to this
    user (it says so on the connection, and the request itself would only time out)."""
    task = asyncio.ensure_future(call)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.1)
            if done:
                return task.result()
            if watch is not None and watch.violations:   # this subject, or the inbox its answer comes to
                raise ConfigError(f"NATS refuses this service's user what it needs ({watch.violations[-1]}, "
                                  f"asking {subject}): its permissions in nats.conf do not match the service")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def await_provisioned(jsm: JetStreamManager, wanted: list[tuple[str, ConsumerConfig]], *,
                            stream: str = PIPELINE_STREAM, watch: PermissionWatch | None = None) -> None:
    """Wait until `tradeflow init` has declared `stream` and the durables in `wanted` ((stream, config)
    pairs), as this service needs them; ConfigError, naming what differs, for a durable declared with
    other settings, or for an API subject this service's user may not use."""
    since = None
    while True:
        missing = None
        try:
            await _api(jsm, jsm.stream_info(stream), f"$JS.API.STREAM.INFO.{stream}", watch)
            for name, config in wanted:
                durable = config.durable_name or ""
                subject = f"$JS.API.CONSUMER.INFO.{name}.{durable}"
                try:
                    have = (await _api(jsm, jsm.consumer_info(name, durable), subject, watch)).config
                except NotFoundError:
                    missing = f"consumer {name}/{durable}"
                    break
                if problems := consumer_problems(name, have, config):
                    raise ConfigError("; ".join(problems) + ": run `tradeflow init` with this service's settings")
                if consumer_drifted(have, config):
                    raise ConfigError(
                        f"consumer {name}/{durable} is declared taking {consumed(have)} with filters "
                        f"{_filters(have)}, ack_wait {have.ack_wait}, max_deliver {have.max_deliver}, max_ack_pending "
                        f"{have.max_ack_pending}; this service needs {consumed(config)}, {_filters(config)}, "
                        f"{config.ack_wait}, {config.max_deliver}, {config.max_ack_pending}: run `tradeflow init` "
                        "with its settings")
        except NotFoundError:
            missing = f"stream {stream}"
        except NOT_YET:
            missing = "an answer from JetStream"
        if missing is None:
            return
        now = asyncio.get_running_loop().time()
        if since is None or now - since >= _WAIT_LOG_EVERY:
            log.warning("waiting for `tradeflow init` to declare what this service uses", extra={"missing": missing})
            since = now
        await asyncio.sleep(0.5)
