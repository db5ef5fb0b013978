"""The `tradeflow` command line: `main` (the console entry point) and its root group `cli`.

One module per command group: `main` (services, deployments, demo, backtest, publish, tail, status),
`history` (the event store: events, trace, store, replay, whatif), `dlq` (dead letters); what they
share is in `common`."""

from services.cli.main import cli, main

__all__ = ["cli", "main"]
