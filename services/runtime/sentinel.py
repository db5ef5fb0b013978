"""Redis through Sentinel: REDIS_URL as `redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`
(`rediss+sentinel://` for TLS to the data nodes and the sentinels), as redis-sentinel-url, RedisVL,
LangChain and Prefect spell it.

The user and password are the data nodes' (what they mean in a redis:// URL); sentinels that ask
for credentials of their own get the `sentinel_username` and `sentinel_password` options. A
sentinel's port is 26379 unless given. The client is redis-py's `Sentinel(...).master_for(service)`:
each new connection asks the sentinels where the master is, so when the master fails the commands
cut off fail (RedisUnavailable: the runtime naks and retries) and, once the sentinels have promoted
a replica, the same client reaches the new master. At start-up the sentinels must name the master:
none answering, or none watching the service, is a one-line error naming REDIS_URL.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from contracts.errors import ConfigError
from services.runtime.settings import redact

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379
SPELLING = "redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]"
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


def is_sentinel_url(url: str) -> bool:
    """Whether REDIS_URL names sentinels rather than one server."""
    return url.partition("://")[0].lower() in SCHEMES


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed redis+sentinel:// URL: the sentinels, the master's service name, and the connection
    options of the data nodes (credentials, db, the URL's other options) and of the sentinels."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    tls: bool
    node: dict[str, Any] = field(default_factory=dict)
    sentinel: dict[str, Any] = field(default_factory=dict)

    @property
    def addresses(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)


def shown(url: str) -> str:
    """`url` as an error shows it: no password, and no option's value (a misspelt password option too)."""
    base, mark, query = redact(url).partition("?")
    return base + mark + re.sub(r"=[^&#]*", "=***", query)


def _fail(why: str, url: str) -> ConfigError:
    return ConfigError(f"REDIS_URL {why}: {shown(url)} (give {SPELLING})")


def parse(url: str) -> SentinelUrl:
    """`url` read as a Sentinel URL; ConfigError naming REDIS_URL (password hidden) if it is not one."""
    scheme, _, rest = url.partition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    userinfo, at, members = rest[:end].rpartition("@")
    tail = urllib.parse.urlsplit(rest[end:])
    sentinels = tuple(_address(member.strip(), url) for member in members.split(",") if member.strip())
    if not sentinels:
        raise _fail("names no sentinel", url)
    path = [urllib.parse.unquote(part) for part in tail.path.strip("/").split("/")] if tail.path.strip("/") else []
    if not path or not path[0]:
        raise _fail("names no service (the master's name the sentinels watch it by)", url)
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise _fail("has a path other than /service_name or /service_name/db", url)
    query = urllib.parse.parse_qsl(tail.query, keep_blank_values=True)
    unknown = sorted({k for k, _ in query if k.startswith("sentinel_") and k not in _SENTINEL_OPTIONS})
    if unknown:
        raise _fail(f"has options no sentinel takes ({', '.join(unknown)})", url)
    sentinel = {k: v for k, v in query if k in _SENTINEL_OPTIONS}
    rest_query = urllib.parse.urlencode([(k, v) for k, v in query if k not in _SENTINEL_OPTIONS])
    standalone = f"redis://{userinfo}{at}localhost/{path[1] if len(path) == 2 else 0}?{rest_query}"
    try:
        node = dict(parse_url(standalone))   # redis-py's own reading of credentials, db and options
    except ValueError as exc:
        raise _fail(f"has a bad option ({exc})", url) from None
    node.pop("host", None)
    node.pop("port", None)
    return SentinelUrl(sentinels, path[0], scheme.lower() == "rediss+sentinel", node,
                       {k.removeprefix("sentinel_"): v for k, v in sentinel.items()})


def _address(member: str, url: str) -> tuple[str, int]:
    """One `host[:port]` of the sentinel list (`[v6]:port` too)."""
    try:
        parts = urllib.parse.urlsplit(f"//{member}")
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise _fail(f"has a bad sentinel address {member!r}", url) from None
    if not host or port == 0 or parts.path or parts.username is not None:
        raise _fail(f"has a bad sentinel address {member!r}", url)
    return host, port or DEFAULT_PORT


class MasterClient(Redis):
    """The master's client (redis-py's master_for); closing it closes the sentinels' connections too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            pool = self.connection_pool
            if isinstance(pool, SentinelConnectionPool):
                await pool.sentinel_manager.aclose()


async def connect(url: str, **options: Any) -> Redis:
    """A client of the master the sentinels of `url` name, with `options` (timeouts, TLS) for the data
    nodes and the sentinels alike; ConfigError naming REDIS_URL if no sentinel answers or none watches
    the service."""
    target = parse(url)
    common = {k: v for k, v in options.items() if k.startswith(("socket_", "ssl"))}
    tls = {"ssl": True} if target.tls else {}
    # a sentinel that does not answer is passed over at once (redis-py's client would retry it ten times)
    once = {"retry": Retry(NoBackoff(), 0)}
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs={**common, **tls, **once, **target.sentinel},
                        **{**options, **tls, **target.node})
    try:
        await _check_master(sentinel, target, url)
    except BaseException:
        await sentinel.aclose()
        raise
    return sentinel.master_for(target.service, redis_class=MasterClient)


async def _check_master(sentinel: Sentinel, target: SentinelUrl, url: str) -> None:
    """Return once a sentinel says it watches `target.service`; ConfigError otherwise."""
    errors: list[str] = []
    watched: set[str] = set()
    for node in sentinel.sentinels:
        try:
            masters = await node.sentinel_masters()
        except (RedisError, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if target.service in masters:
            return
        watched |= set(masters)
    if len(errors) == len(sentinel.sentinels):
        raise ConfigError(f"REDIS_URL: no sentinel answered at {target.addresses} ({shown(url)}): "
                          f"{errors[0]}".replace("\n", " "))
    raise ConfigError(f"REDIS_URL: the sentinels at {target.addresses} name no master {target.service!r} "
                      f"(they watch {', '.join(repr(n) for n in sorted(watched)) or 'none'}; {shown(url)})")


def master_address(redis: Redis) -> str | None:
    """host:port of the master a Sentinel client last found (None before its first connection, or for
    a client of one server)."""
    pool = redis.connection_pool
    if isinstance(pool, SentinelConnectionPool) and pool.master_address:
        host, port = pool.master_address
        return f"{host}:{port}"
    return None
