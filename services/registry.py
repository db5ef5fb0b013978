"""The services `tradeflow run` knows, in pipeline order."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

SERVICES = ("data", "strategy", "quant", "risk", "execution", "audit")
CONSUMERS = SERVICES[1:]  # every service but data has a durable consumer


def build(name: str, environ: Mapping[str, str] | None = None):
    """The agent of service `name`, configured from the environment."""
    if name not in SERVICES:
        raise KeyError(name)
    return importlib.import_module(f"services.{name}.service").build(environ)
