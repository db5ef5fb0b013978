"""The services `tradeflow run` knows: the six agents in pipeline order, the recorder, the dashboard."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

AGENTS = ("data", "strategy", "quant", "risk", "execution", "audit")
CONSUMERS = AGENTS[1:]              # the agents with a durable consumer (all but data)
SERVICES = (*AGENTS, "recorder")    # the recorder writes every pipeline event to the event store
DURABLES = (*CONSUMERS, "recorder")  # every durable consumer on PIPELINE: drained when all have caught up
DASHBOARD = "dashboard"              # the live web page and controls (tradeflow up starts it too)
RUNNABLE = (*SERVICES, DASHBOARD)   # what `tradeflow run` can run


def build(name: str, environ: Mapping[str, str] | None = None):
    """The agent of service `name`, configured from the environment."""
    if name not in RUNNABLE:
        raise KeyError(name)
    return importlib.import_module(f"services.{name}.service").build(environ)
