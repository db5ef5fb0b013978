"""Connections that outlive outages: NATS reconnects forever, the first connect is retried."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client as NATS
from redis.asyncio import Redis
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, wait_exponential

from services.runtime.settings import redact

log = logging.getLogger(__name__)


async def connect_nats(url: str, name: str) -> NATS:
    """Connect, retrying until the server answers; afterwards reconnect forever (nats-py gives up by default)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    async for attempt in AsyncRetrying(
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception_type((OSError, nats.errors.Error, TimeoutError)),
        before_sleep=before_sleep_log(log, logging.WARNING),
    ):
        with attempt:
            return await nats.connect(
                servers=[url],
                name=name,
                connect_timeout=2,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                pending_size=64 * 1024 * 1024,
            )
    raise AssertionError("unreachable")


def connect_redis(url: str) -> Redis:
    """A Redis client with short timeouts, so an outage is noticed rather than waited on."""
    log.info("redis", extra={"url": redact(url)})
    return Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=5)
