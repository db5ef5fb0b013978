"""Real historical OHLCV data shipped offline inside the backtesting.py package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from contracts.errors import ConfigError

BUILTIN = {"GOOG": "GOOG.csv", "EURUSD": "EURUSD.csv", "BTCUSD": "BTCUSD.csv"}


def builtin_path(name: str) -> Path:
    """Path of a bundled data set: GOOG (daily 2004-2013), EURUSD (hourly 2017-2018), BTCUSD (monthly)."""
    if name.upper() not in BUILTIN:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(BUILTIN)} or give a CSV path")
    try:
        root = resources.files("backtesting") / "test"
    except ModuleNotFoundError:
        raise ConfigError("the bundled data sets need backtesting.py: pip install 'tradeflow[data]'") from None
    return Path(str(root / BUILTIN[name.upper()]))
