"""Connections that outlive outages: NATS (re)connects forever, Redis fails fast so outages show."""

from __future__ import annotations

import logging
import os
import ssl
from urllib.parse import unquote, urlsplit

import msgspec
import nats
from nats.aio.client import Client as NATS
from redis.asyncio import Redis
from redis.exceptions import RedisError

from contracts.errors import ConfigError
from services.runtime import sentinel

log = logging.getLogger(__name__)

# what a Redis call raises while the server is away or restarting: redis-py's errors, the socket's,
# and uvloop's RuntimeError for a transport that closed under a call in progress
REDIS_UNAVAILABLE = (RedisError, OSError, RuntimeError)


class TlsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_NATS_CA, _CERT, _KEY: TLS to NATS, trusting the CA given (the system's if none), with a
    client certificate when the server asks for one. With none of them set, TLS is used only if the URL
    is tls://."""

    nats_ca: str | None = None
    nats_cert: str | None = None
    nats_key: str | None = None

    def context(self, url: str = "") -> ssl.SSLContext | None:
        """The TLS context to connect with, or None for plain NATS; ConfigError naming a bad file."""
        if not (self.nats_ca or self.nats_cert or url.startswith("tls://")):
            return None
        try:
            context = ssl.create_default_context(cafile=self.nats_ca)
            if self.nats_cert:
                context.load_cert_chain(self.nats_cert, self.nats_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TRADEFLOW_NATS_CA/_CERT/_KEY: {exc}") from None
        return context


class PermissionWatch:
    """The permission violations the server reported on a connection (it answers a denied publish with
    an error on the connection, not on the publish, whose PubAck then never comes)."""

    def __init__(self) -> None:
        self.violations: list[str] = []

    def record(self, message: str) -> None:
        self.violations = [*self.violations[-99:], message]

    def refused(self, subject: str) -> str | None:
        """The server's message if it refused a publish to `subject`, else None."""
        quoted = f'"{subject.lower()}"'   # the client lower-cases the server's message
        return next((m for m in reversed(self.violations) if quoted in m.lower() and "publish" in m.lower()), None)


def servers(url: str) -> list[str]:
    """NATS_URL as a server list: one URL, or several comma-separated (a cluster's nodes; clients fail over)."""
    return [u.strip() for u in url.split(",") if u.strip()]


def nats_options(url: str) -> dict:
    """nats.connect's servers, user and password for NATS_URL. Credentials shared by every URL are given
    once, as options: nats-py then uses them for the nodes the cluster tells it about too (it compares
    addresses with the credentials in, so it would otherwise try those nodes without them and be refused)."""
    urls = servers(url)
    parsed = [urlsplit(u) for u in urls]
    users = {(p.username, p.password) for p in parsed}
    user, password = next(iter(users))
    if len(users) != 1 or user is None or password is None:   # none, a token, or one per server: as given
        return {"servers": urls}
    bare = [p._replace(netloc=p.netloc.rpartition("@")[2]).geturl() for p in parsed]
    return {"servers": bare, "user": unquote(user), "password": unquote(password)}


async def connect_nats(url: str, name: str, watch: PermissionWatch | None = None,
                       tls: ssl.SSLContext | None = None, inbox_prefix: str = "_INBOX") -> NATS:
    """Connect, retrying until the server answers; afterwards reconnect forever (nats-py gives up by default).
    `inbox_prefix`: where replies come (a service's user may receive only on its own)."""

    async def on_error(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            log.error("nats refused this service's user: a deployment error (nats.conf permissions)",
                      extra={"error": str(exc)})
            if watch is not None:
                watch.record(str(exc))
            return
        log.warning("nats error", extra={"error": repr(exc)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    # with max_reconnect_attempts=-1 nats-py also retries the first connect until it succeeds
    return await nats.connect(
        **nats_options(url),
        name=name,
        connect_timeout=2,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
        tls=tls,
        inbox_prefix=inbox_prefix,
    )


class RedisTlsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_REDIS_CA, _CERT, _KEY: TLS to Redis (a rediss:// REDIS_URL), trusting the CA given (the
    system's if none), with a client certificate when the server asks for one."""

    redis_ca: str | None = None
    redis_cert: str | None = None
    redis_key: str | None = None

    def options(self, url: str) -> dict:
        """redis-py's TLS options for REDIS_URL; ConfigError naming the setting that cannot work."""
        given = {name: path for name, path in (("TRADEFLOW_REDIS_CA", self.redis_ca),
                                               ("TRADEFLOW_REDIS_CERT", self.redis_cert),
                                               ("TRADEFLOW_REDIS_KEY", self.redis_key)) if path}
        if not url.lower().startswith(("rediss://", "rediss+sentinel://")):
            if given:
                raise ConfigError(f"{', '.join(given)} set, but REDIS_URL is not rediss://: TLS to Redis "
                                  "needs a rediss:// (or rediss+sentinel://) URL")
            return {}
        for name, path in given.items():
            if not os.path.isfile(path):
                raise ConfigError(f"{name}: no file {path}")
        if bool(self.redis_cert) != bool(self.redis_key):
            raise ConfigError("TRADEFLOW_REDIS_CERT and TRADEFLOW_REDIS_KEY go together: give both or neither")
        return {"ssl_ca_certs": self.redis_ca, "ssl_certfile": self.redis_cert, "ssl_keyfile": self.redis_key,
                "ssl_cert_reqs": "required"}


async def connect_redis(url: str, tls: RedisTlsSettings | None = None) -> Redis:
    """The runtime's one way to Redis: a client of one server (redis://, rediss://: TLS with `tls`'s CA and
    client certificate) or of the master a Sentinel set names (redis+sentinel://, rediss+sentinel://:
    services/runtime/sentinel.py). Short timeouts and no retries, so an outage is noticed rather than
    waited on; ConfigError naming REDIS_URL (password hidden) if the URL cannot work."""
    log.info("redis", extra={"url": sentinel.shown(url)})
    options = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, "health_check_interval": 5,
               **(tls or RedisTlsSettings()).options(url)}
    if sentinel.is_sentinel_url(url):
        return await sentinel.connect(url, **options)
    try:
        return Redis.from_url(url, **options)
    except ValueError as exc:   # redis-py's reading of the URL: its scheme, port or options
        raise ConfigError(f"REDIS_URL {sentinel.shown(url)}: {exc}") from None


def redis_location(redis: Redis, url: str) -> dict[str, str | None]:
    """Where a client of connect_redis goes: REDIS_URL without its password (nor its options' values) and,
    through Sentinel, the master last found (what /v1/health shows)."""
    return {"url": sentinel.shown(url), "master": sentinel.master_address(redis)}
