"""The runtime settings every service shares (TRADEFLOW_*, NATS_URL, REDIS_URL)."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from contracts.codec import MAX_BODY_BYTES
from services.runtime.settings import Redacted

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]


class RuntimeSettings(Redacted, msgspec.Struct, frozen=True, kw_only=True):
    """How a service connects, consumes, retries and reports."""

    ENV_NAMES: ClassVar[dict[str, str]] = {"nats_url": "NATS_URL", "redis_url": "REDIS_URL"}

    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    http_host: str = "127.0.0.1"
    http_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8080
    log_level: str = "INFO"
    data_dir: str = "var"
    # consuming
    batch_size: PositiveInt = 256
    fetch_timeout: Seconds = 1.0
    max_ack_pending: PositiveInt = 4096
    max_deliver: PositiveInt = 8
    ack_wait: Seconds = 30.0
    backoff: list[Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(
        default_factory=lambda: [0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
    publish_timeout: Seconds = 5.0
    publish_window: PositiveInt = 1024   # outstanding async publishes per service
    drain_timeout: Seconds = 10.0
    journey_timeout: Seconds = 300.0   # an event a stage has not processed in this long is overdue (journey.py)
    max_body_bytes: PositiveInt = MAX_BODY_BYTES
    # streams
    stream_max_age: Seconds = 7 * 24 * 3600.0
    dlq_max_age: Seconds = 90 * 24 * 3600.0
    duplicate_window: Seconds = 120.0
    stream_replicas: PositiveInt = 1
    dedup_ttl: Seconds = 7 * 24 * 3600.0
    # the state rebuild: how long it waits for the event store to catch up with the stream (rebuild.py)
    rebuild_wait: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # the exchange calendar that market-phase schedules follow (services/runtime/market.py)
    calendar: str = "XNYS"
    # replicas of a per-symbol service (services/runtime/partition.py): replica i of n, and the symbols they share
    partition: str | None = None
    symbols: list[str] = msgspec.field(default_factory=list)
    # fault injection, for the fault tests: a handled body containing this text fails / ends the process
    fault_fail_on: str | None = None
    fault_exit_on: str | None = None
