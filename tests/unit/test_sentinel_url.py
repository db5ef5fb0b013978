"""REDIS_URL through Sentinel: how redis+sentinel:// URLs are read, and every way one cannot work is a
one-line error naming REDIS_URL, its password hidden."""

from __future__ import annotations

import pytest

from contracts.errors import ConfigError
from services.runtime.config import RuntimeSettings
from services.runtime.connect import connect_redis
from services.runtime.sentinel import is_sentinel_url, parse
from services.runtime.settings import load

SECRET = "s3cret-Pw"


@pytest.mark.parametrize("url, sentinels, service, node, sentinel, tls", [
    ("redis+sentinel://s1:26380,s2,[::1]:26381/mymaster", [("s1", 26380), ("s2", 26379), ("::1", 26381)],
     "mymaster", {"db": 0}, {}, False),
    (f"redis+sentinel://risk:{SECRET}@s1:5000/tradeflow/3", [("s1", 5000)], "tradeflow",
     {"username": "risk", "password": SECRET, "db": 3}, {}, False),
    (f"redis+sentinel://:p%40ss@s1/tradeflow?sentinel_password={SECRET}&socket_keepalive=yes", [("s1", 26379)],
     "tradeflow", {"password": "p@ss", "db": 0, "socket_keepalive": True}, {"password": SECRET}, False),
    ("rediss+sentinel://s1:26379/tradeflow", [("s1", 26379)], "tradeflow", {"db": 0}, {}, True),
    ("REDIS+SENTINEL://s1/my%20master/1", [("s1", 26379)], "my master", {"db": 1}, {}, False),
], ids=["sentinels-default-port-v6", "user-password-db", "sentinel-password-option", "tls", "upper-case-quoted"])
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_data_nodes_options(url, sentinels, service, node,
                                                                                   sentinel, tls):
    assert is_sentinel_url(url)
    parsed = parse(url)
    assert (list(parsed.sentinels), parsed.service, parsed.node, parsed.sentinel, parsed.tls) == (
        sentinels, service, node, sentinel, tls)


@pytest.mark.parametrize("url, says", [
    (f"redis+sentinel://:{SECRET}@s1:26379", "names no service"),
    (f"redis+sentinel://:{SECRET}@s1:26379/", "names no service"),
    (f"redis+sentinel://:{SECRET}@s1:port/tradeflow", "bad sentinel address 's1:port'"),
    (f"redis+sentinel://:{SECRET}@s1:70000/tradeflow", "bad sentinel address 's1:70000'"),
    (f"redis+sentinel://:{SECRET}@s1:0/tradeflow", "bad sentinel address 's1:0'"),
    (f"redis+sentinel://:{SECRET}@/tradeflow", "names no sentinel"),
    (f"redis+sentinel://:{SECRET}@s1/tradeflow/zero", "path other than /service_name or /service_name/db"),
    (f"redis+sentinel://s1/tradeflow?sentinel_pasword={SECRET}", "options no sentinel takes (sentinel_pasword)"),
    (f"redis+sentinel://:{SECRET}@s1/tradeflow?socket_timeout=soon", "bad option"),
], ids=["no-service", "empty-service", "port-not-a-number", "port-too-big", "port-zero", "no-sentinel",
        "db-not-a-number", "misspelt-option", "bad-option"])
async def test_a_sentinel_url_that_cannot_work_is_one_line_naming_redis_url_without_its_password(url, says):
    with pytest.raises(ConfigError) as caught:
        await connect_redis(url)
    message = str(caught.value)
    assert message.startswith("REDIS_URL") and says in message and "\n" not in message, message
    assert SECRET not in message and "***" in message


@pytest.mark.parametrize("url, says", [
    (f"redis://:{SECRET}@cache:port/0", "Port could not be cast to integer"),
    (f"memcached://:{SECRET}@cache:11211", "Redis URL must specify one of the following schemes"),
])
async def test_a_plain_redis_url_that_cannot_work_is_one_line_too(url, says):
    with pytest.raises(ConfigError) as caught:
        await connect_redis(url)
    message = str(caught.value)
    assert message.startswith("REDIS_URL") and says in message and SECRET not in message, message


def test_the_settings_show_a_sentinel_url_without_any_password():
    url = f"redis+sentinel://risk:{SECRET}@s1:26379,s2:26379/tradeflow/0?sentinel_password={SECRET}x"
    settings = load(RuntimeSettings, "TRADEFLOW_", {"REDIS_URL": url})
    assert settings.redis_url == url
    shown = repr(settings)
    assert SECRET not in shown
    assert "redis+sentinel://***@s1:26379,s2:26379/tradeflow/0?sentinel_password=***" in shown
