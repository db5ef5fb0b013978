"""Partitioned replicas: who owns which symbol, and the settings that cannot work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from contracts.errors import ConfigError
from services import registry
from services.runtime.config import RuntimeSettings
from services.runtime.partition import Partition
from services.runtime.service import Service

SYMBOLS = [f"S{i:03d}" for i in range(50)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_every_symbol_has_exactly_one_owner_and_shares_differ_by_at_most_one(count):
    shares = [Partition.parse(f"{i}/{count}", SYMBOLS).owned for i in range(count)]
    owners = [s for share in shares for s in share]
    assert sorted(owners) == sorted(SYMBOLS)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_the_layout_does_not_depend_on_the_order_the_symbols_are_listed_in():
    assert Partition.parse("1/3", SYMBOLS).owned == Partition.parse("1/3", list(reversed(SYMBOLS)) + SYMBOLS[:5]).owned


def test_filters_narrow_each_stage_to_the_owned_symbols_and_the_durable_names_the_replica():
    p = Partition.parse("1/2", ["MSFT", "AAPL", "BRK.B"])
    assert p.owned == ("BRK.B",)
    assert p.filters(["data_ready.>", "rejected.quant.>"]) == ("data_ready.BRK.B", "rejected.quant.BRK.B")
    assert p.durable("strategy") == "strategy-p1of2"


@pytest.mark.parametrize("spec, symbols, message", [
    ("2/2", ["AAPL", "MSFT"], "replica 2 of 2 does not exist (0 to 1)"),
    ("0/0", ["AAPL"], "replica 0 of 0 does not exist"),
    ("one of two", ["AAPL"], "'one of two' is not i/n"),
    ("-1/2", ["AAPL"], "is not i/n"),
    ("0/2", [], "needs TRADEFLOW_SYMBOLS"),
    ("0/2", ["AAPL", "aapl", "A B"], "not a symbol ([A-Z0-9._-], 1 to 32): 'aapl', 'A B'"),
    ("2/3", ["AAPL", "MSFT"], "replica 2 of 3 owns none of the 2 symbols in TRADEFLOW_SYMBOLS: run fewer replicas"),
    ("0/2" + "0" * 5000, ["AAPL"], "is not i/n"),
])
def test_bad_partition_settings_say_what_is_wrong(spec, symbols, message):
    with pytest.raises(ConfigError) as err:
        Partition.parse(spec, symbols)
    assert message in str(err.value)


def test_a_subject_pattern_without_a_symbol_cannot_be_partitioned():
    with pytest.raises(ConfigError, match="do not end in a symbol"):
        Partition.parse("0/1", ["AAPL"]).filters(["data_ready.*.x"])


@pytest.mark.parametrize("service", ["risk", "execution", "audit", "recorder"])
def test_stages_that_keep_a_portfolio_refuse_a_partition(service):
    settings = RuntimeSettings(partition="0/2", symbols=["AAPL", "MSFT"])
    with pytest.raises(ConfigError, match=f"{service} keeps state across symbols"):
        Service(registry.build(service, {}), settings)


def test_a_partitioned_strategy_consumes_only_its_symbols_on_its_own_durable():
    agent = registry.build("strategy", {})
    service = Service(agent, RuntimeSettings(partition="0/2", symbols=["MSFT", "AAPL", "TSLA"]))
    assert service.consumer == "strategy-p0of2"
    assert tuple(agent.consumes) == ("data_ready.AAPL", "data_ready.TSLA")
    assert Service(registry.build("strategy", {}), RuntimeSettings()).consumer == "strategy"


@pytest.mark.parametrize("service, partition, message", [
    ("risk", "0/2", "TRADEFLOW_PARTITION: risk keeps state across symbols and runs as one replica"),
    ("strategy", "5/2", "TRADEFLOW_PARTITION: replica 5 of 2 does not exist (0 to 1)"),
])
def test_tradeflow_run_says_in_one_line_why_a_partition_cannot_be(service, partition, message):
    env = os.environ | {"TRADEFLOW_PARTITION": partition, "TRADEFLOW_SYMBOLS": "AAPL,MSFT",
                        "NATS_URL": "nats://127.0.0.1:1"}
    run = subprocess.run([sys.executable, "-m", "services.cli", "run", service], env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1
    [line] = run.stderr.strip().splitlines()
    assert message in line
