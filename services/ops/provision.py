"""What `tradeflow init` declares for a deployment: every durable of the services it runs, found from the
agents themselves (what each consumes, whether it may be partitioned), provisioned with the operator's
user before the services start (services/runtime/topology.py declares them, idempotently)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import nats
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig
from nats.js.errors import APIError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from contracts.errors import ConfigError
from contracts.subjects import ADVISORY_STREAM, PIPELINE_STREAM
from services.registry import DURABLES, build  # the agents' classes: what each consumes
from services.runtime.advisories import advisory_consumer_config
from services.runtime.config import RuntimeSettings
from services.runtime.connect import nats_options
from services.runtime.partition import Partition
from services.runtime.settings import redact
from services.runtime.topology import NOT_YET, consumer_config, provision

log = logging.getLogger(__name__)


def deployment_consumers(settings: RuntimeSettings, replicas: dict[str, int] | None = None,
                         symbols: list[str] | tuple[str, ...] = (),
                         settings_for: Callable[[str], RuntimeSettings] | None = None
                         ) -> list[tuple[str, ConsumerConfig]]:
    """Every durable a deployment runs: each consuming service's on PIPELINE (or, for a service run as
    `replicas[name]` partitioned replicas over `symbols`, each replica's) and each one's advisories durable,
    with `settings`, or a service's own from `settings_for(name)` (ack_wait, max_deliver, ...)."""
    out = []
    for name in DURABLES:
        agent = type(build(name, {}))
        count = (replicas or {}).get(name, 1)
        if count > 1 and not agent.options.partitionable:
            raise ConfigError(f"{name} cannot run as replicas (only strategy and quant can be partitioned)")
        shares = [(name, list(agent.consumes))] if count == 1 else [
            (p.durable(name), list(p.filters(agent.consumes)))
            for p in (Partition.parse(f"{i}/{count}", symbols) for i in range(count))]
        own = settings_for(name) if settings_for is not None else settings
        for durable, filters in shares:
            out.append((PIPELINE_STREAM, consumer_config(durable, filters, own)))
            out.append((ADVISORY_STREAM, advisory_consumer_config(durable, own,
                                                                  terminated=agent.options.dead_letters)))
    return out


NO_PEERS = 10005   # JetStream's "no suitable peers for placement"


def _not_yet(exc: BaseException) -> bool:
    """Whether JetStream may answer otherwise in a moment: no answer yet, or, in a cluster still forming, too
    few nodes joined yet to place a stream's replicas."""
    return isinstance(exc, NOT_YET) or (isinstance(exc, APIError) and exc.err_code == NO_PEERS)


async def init(settings: RuntimeSettings, replicas: dict[str, int] | None = None,
               tls: ssl.SSLContext | None = None,
               settings_for: Callable[[str], RuntimeSettings] | None = None) -> list[str]:
    """`tradeflow init`: connect to settings.nats_url (the operator's user) and provision the streams and
    every durable of a deployment whose partitioned services run as `replicas` over settings.symbols
    (`settings_for`: a service's own settings, where they differ)."""
    consumers = deployment_consumers(settings, replicas, settings.symbols, settings_for)

    async def quietly(exc: Exception) -> None:   # the failure is raised once, below, in one line
        log.debug("nats error", extra={"error": repr(exc)})

    try:
        nc = await nats.connect(**nats_options(settings.nats_url), name="tradeflow-init", connect_timeout=5,
                                max_reconnect_attempts=3, reconnect_time_wait=0.5, tls=tls, error_cb=quietly)
    except (NatsError, OSError) as exc:
        raise ConfigError(f"NATS_URL: cannot reach NATS at {redact(settings.nats_url)} ({exc})") from None
    try:
        # a cluster that has just started answers only once it has a JetStream meta leader: ask again
        async for attempt in AsyncRetrying(retry=retry_if_exception(_not_yet), stop=stop_after_delay(60),
                                           wait=wait_exponential(multiplier=0.2, max=2), reraise=True):
            with attempt:
                return await provision(nc.jsm(timeout=10), settings, consumers)
        raise AssertionError("unreachable: the last attempt's error is raised")
    finally:
        await nc.close()
