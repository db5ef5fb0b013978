"""What every `tradeflow` command group shares: the CLI's settings, a NATS connection, running a coroutine
until Ctrl-C, and the one-line failure."""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, ClassVar

import click
import msgspec
from nats.errors import Error as NatsError


class CliSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the CLI reads from the environment."""

    ENV_NAMES: ClassVar[dict[str, str]] = {"nats_url": "NATS_URL", "redis_url": "REDIS_URL"}
    nats_url: str | None = None     # None: `up` starts its own server; publish/tail use 127.0.0.1:4222
    redis_url: str | None = None

    @property
    def nats(self) -> str:
        return self.nats_url or "nats://127.0.0.1:4222"


def cli_settings() -> CliSettings:
    from services.runtime.settings import load

    return load(CliSettings, "TRADEFLOW_")


def fail(message: str) -> None:
    raise click.ClickException(message)


def run_async(coro) -> object:
    """Run a coroutine; SIGINT/SIGTERM cancel it cleanly; connection errors become one-line messages
    (tradeflow's own errors are turned into one by `services.cli.main.Cli.invoke`)."""

    async def main():
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await coro

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        click.echo("stopped", err=True)
        return None
    except (OSError, TimeoutError, NatsError) as exc:
        fail(f"{type(exc).__name__}: {exc}")


async def connect():
    """A NATS connection for a CLI command; a one-line error if the server is not there."""
    import nats

    async def quiet(_: Exception) -> None:
        pass

    from services.runtime.connect import TlsSettings, nats_options
    from services.runtime.settings import load, redact

    url = cli_settings().nats
    tls = load(TlsSettings, "TRADEFLOW_").context(url)
    try:
        return await nats.connect(**nats_options(url), connect_timeout=3, allow_reconnect=False,
                                  max_reconnect_attempts=1, reconnect_time_wait=0.2, error_cb=quiet, tls=tls)
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        fail(f"cannot reach NATS at {redact(url)} (set NATS_URL): {type(exc).__name__}")


class Progress:
    """Progress bars on standard error for a long command, one per phase: call it with (what, done, total)
    as often as it likes; a new `what` ends the last bar and starts the next. When standard error is not
    a terminal, click prints each phase's label alone, once."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.what: str | None = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if what != self.what:
            self.close()
            self.what = what
            self.bar = click.progressbar(length=max(total, 1), label=what, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        bar = self.bar
        bar.length = max(total, done, 1)   # a drain's total grows while outputs are published
        if done > bar.pos:
            bar.update(done - bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_) -> None:
        self.close()
