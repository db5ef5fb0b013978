"""settings.load from the environment, RuntimeSettings' redacted repr, and the retry backoff schedule."""

from __future__ import annotations

import pytest

from contracts.errors import ConfigError
from services.data.service import DataSettings
from services.runtime.config import RuntimeSettings
from services.runtime.settings import load
from services.runtime.decisions import backoff_delay


def runtime(**env: str) -> RuntimeSettings:
    return load(RuntimeSettings, "TRADEFLOW_", env)


def test_no_environment_gives_the_defaults():
    settings = runtime()
    assert settings.batch_size == 256
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.backoff == [0.5, 1.0, 2.0, 5.0, 10.0, 30.0]


def test_env_strings_are_converted_to_field_types():
    settings = runtime(TRADEFLOW_BATCH_SIZE="12", TRADEFLOW_ACK_WAIT="2.5", TRADEFLOW_HTTP_PORT="0",
                       TRADEFLOW_BACKOFF=" 0.1, 0.2 ,,3", NATS_URL="nats://10.0.0.5:4222")
    assert settings.batch_size == 12
    assert settings.ack_wait == 2.5
    assert settings.http_port == 0
    assert settings.backoff == [0.1, 0.2, 3.0]  # spaces trimmed, empty items dropped
    assert settings.nats_url == "nats://10.0.0.5:4222"


def test_urls_use_their_conventional_names_not_the_prefix():
    settings = runtime(TRADEFLOW_NATS_URL="nats://ignored:1", TRADEFLOW_REDIS_URL="redis://ignored:2")
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_overrides_win_over_the_environment():
    assert load(RuntimeSettings, "TRADEFLOW_", {"TRADEFLOW_BATCH_SIZE": "12"}, batch_size=3).batch_size == 3


def test_a_service_prefix_reads_its_own_variables():
    cfg = load(DataSettings, "TRADEFLOW_DATA_", {"TRADEFLOW_DATA_SYMBOLS": "AAPL, MSFT,GOOG",
                                                 "TRADEFLOW_DATA_BARS": "30", "TRADEFLOW_DATA_RATE": "0.5",
                                                 "TRADEFLOW_BARS": "999"})
    assert (cfg.symbols, cfg.bars, cfg.rate) == (["AAPL", "MSFT", "GOOG"], 30, 0.5)


@pytest.mark.parametrize(("name", "value", "why"), [
    pytest.param("TRADEFLOW_BATCH_SIZE", "zero", "Expected `int`", id="batch-size-word"),
    pytest.param("TRADEFLOW_BATCH_SIZE", "0", ">= 1", id="batch-size-zero"),
    pytest.param("TRADEFLOW_BATCH_SIZE", "2.5", "Expected `int`", id="batch-size-fraction"),
    pytest.param("TRADEFLOW_ACK_WAIT", "0", "> 0", id="ack-wait-zero"),
    pytest.param("TRADEFLOW_HTTP_PORT", "70000", "<= 65535", id="port-too-high"),
    pytest.param("TRADEFLOW_BACKOFF", "1, soon", "Expected `float`", id="backoff-item-not-a-number"),
    pytest.param("TRADEFLOW_BACKOFF", "1,-2", ">= 0", id="backoff-item-negative"),
])
def test_bad_value_raises_config_error_naming_the_variable(name, value, why):
    with pytest.raises(ConfigError, match=f"^invalid setting: {name}: .*{why}"):
        runtime(**{name: value})


def test_repr_hides_the_nats_password():
    settings = runtime(NATS_URL="nats://user:secret@host:4222", REDIS_URL="redis://:hunter2@cache:6379/0")
    text = repr(settings)
    assert "secret" not in text and "hunter2" not in text
    assert "nats://***@host:4222" in text
    assert settings.nats_url == "nats://user:secret@host:4222"  # only the repr is redacted


def test_repr_hides_every_password_of_a_server_list():
    text = repr(runtime(NATS_URL="nats://a:pw1@h1:4222,nats://b:pw2@h2:4222"))
    assert "pw1" not in text and "pw2" not in text


def test_repr_hides_a_password_containing_an_at_sign():
    assert "ssw0rd" not in repr(runtime(NATS_URL="nats://user:p@ssw0rd@host:4222"))


@pytest.mark.parametrize(("attempt", "delay"), [
    pytest.param(-1, 0.5, id="negative-is-first"),
    pytest.param(0, 0.5, id="attempt-0-is-first"),
    pytest.param(1, 0.5, id="attempt-1-is-first"),
    pytest.param(2, 1.0, id="attempt-2"),
    pytest.param(3, 5.0, id="last-step"),
    pytest.param(4, 5.0, id="last-step-repeats"),
    pytest.param(100, 5.0, id="far-past-the-end"),
])
def test_backoff_delay_walks_the_schedule(attempt, delay):
    assert backoff_delay([0.5, 1.0, 5.0], attempt) == delay


def test_empty_backoff_schedule_means_no_delay():
    assert backoff_delay([], 3) == 0.0


def test_nats_url_lists_servers_and_gives_shared_credentials_once():
    from services.runtime.connect import nats_options

    assert nats_options("nats://127.0.0.1:4222") == {"servers": ["nats://127.0.0.1:4222"]}
    assert nats_options("nats://a:p%40ss@h1:1, nats://a:p%40ss@h2:2") == {
        "servers": ["nats://h1:1", "nats://h2:2"], "user": "a", "password": "p@ss"}
    assert nats_options("nats://tok@h1:1")["servers"] == ["nats://tok@h1:1"]            # a token stays in the URL
    assert nats_options("nats://a:x@h1:1,nats://b:y@h2:2")["servers"] == ["nats://a:x@h1:1", "nats://b:y@h2:2"]
    assert nats_options("tls://a:b@h:1")["servers"] == ["tls://h:1"]
