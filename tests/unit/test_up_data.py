"""Where `tradeflow up`'s data service takes its bars from: --data, else TRADEFLOW_DATA_* as `run data` does."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from contracts.errors import ConfigError
from services.cli import cli
from services.cli.main import _data_env


@pytest.fixture(autouse=True)
def no_data_settings(monkeypatch):
    import os

    for name in [n for n in os.environ if n.startswith("TRADEFLOW_DATA_")]:
        monkeypatch.delenv(name)


def test_without_data_the_environment_decides_and_none_says_why(monkeypatch):
    env, source = _data_env(())
    assert env == {} and source.startswith("none: publishing nothing (TRADEFLOW_DATA_SOURCE is none; set it to")
    monkeypatch.setenv("TRADEFLOW_DATA_SOURCE", "synthetic")
    monkeypatch.setenv("TRADEFLOW_DATA_SYMBOLS", "AAPL,MSFT,NVDA")
    monkeypatch.setenv("TRADEFLOW_DATA_BARS", "100")
    assert _data_env(()) == ({}, "synthetic (seed 7): 300 bars of 3 symbol(s) (AAPL, MSFT, NVDA), as fast as possible")
    monkeypatch.setenv("TRADEFLOW_DATA_MODE", "poll")
    assert _data_env(())[1] == "synthetic (seed 7), polled: 3 symbol(s) (AAPL, MSFT, NVDA)"


def test_data_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("TRADEFLOW_DATA_SOURCE", "http")
    env, source = _data_env(("GOOG",))
    assert env == {"TRADEFLOW_DATA_SOURCE": "csv", "TRADEFLOW_DATA_FILES": "GOOG", "TRADEFLOW_DATA_MODE": "batch"}
    assert source == "csv GOOG: 2,148 bars of 1 symbol(s) (GOOG), as fast as possible"


@pytest.mark.parametrize("name, value, error", [
    ("TRADEFLOW_DATA_MODE", "sometimes", "TRADEFLOW_DATA_MODE: unknown mode"),
    ("TRADEFLOW_DATA_BARS", "-3", "TRADEFLOW_DATA_BARS"),
])
def test_bad_data_settings_fail_up_before_anything_starts(monkeypatch, tmp_path, name, value, error):
    monkeypatch.setenv("TRADEFLOW_DATA_SOURCE", "synthetic")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=error):
        _data_env(())
    result = CliRunner().invoke(cli, ["up", "--home", str(tmp_path / "up"), "--nats-port", "0", "--redis-port", "0"])
    assert result.exit_code != 0 and error in result.output
    assert not (tmp_path / "up").exists()   # nothing started, nothing written
