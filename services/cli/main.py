"""The `tradeflow` command line: run one service, bring up a deployment, demo, publish, tail;
the event store's commands (events, trace, store, ...) come from `services.cli.history`, the dead letters'
from `services.cli.dlq`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from datetime import datetime
from pathlib import Path

import click
import msgspec
import orjson

from contracts.errors import TradeflowError
from services.cli.common import Progress, cli_settings, connect, fail, run_async
from services.cli.dlq import dlq
from services.cli.history import COMMANDS
from services.registry import DASHBOARD, DURABLES, RUNNABLE, SERVICES


class Cli(click.Group):
    """Turns tradeflow's own errors (bad settings, bad files) into a one-line message and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TradeflowError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tradeflow")
def cli() -> None:
    """tradeflow: an event-sourced pipeline of six trading agents on NATS JetStream."""


@cli.command()
@click.argument("service", type=click.Choice(RUNNABLE))
def run(service: str) -> None:
    """Run one SERVICE in this process (settings from the environment)."""
    from services.registry import build
    from services.runtime.config import RuntimeSettings
    from services.runtime.service import run as run_service
    from services.runtime.settings import load

    settings = load(RuntimeSettings, "TRADEFLOW_")
    sys.exit(run_service(build(service), settings))


def trading_options(command):
    """The options `backtest` and `demo` share: strategy, parameters, account, sizing, fills."""
    for option in reversed([
        click.option("--strategy", default="sma_cross", show_default=True, help="Strategy name."),
        click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                     help="Strategy parameter, e.g. --param fast=10 --param slow=20. Repeatable."),
        click.option("--cash", type=click.FloatRange(min=0, min_open=True), default=10_000, show_default=True),
        click.option("--commission", type=click.FloatRange(0, 0.1, max_open=True), default=0.002, show_default=True,
                     help="Commission as a fraction of notional, on every fill."),
        click.option("--sizing", default="all_in", show_default=True, metavar="all_in|fixed:N",
                     help="all_in: flatten, then the whole equity on each signal (limits off); fixed:N units."),
        click.option("--fill-price", type=click.Choice(["next_open", "close"]), default="next_open",
                     show_default=True, help="Fill at the next bar's open or at the signal bar's close."),
    ]):
        command = option(command)
    return command


def _trading_env(strategy, params, cash, commission, sizing, fill_price) -> dict[str, str]:
    from services.offline.backtest import settings_env

    return settings_env(strategy=strategy, params=params, cash=cash, commission=commission, sizing=sizing,
                        fill_price=fill_price)


def _print_report(report: dict, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(report).decode())
        return
    click.echo(f"{'trade':>5} {'entry':<26} {'exit':<26} {'size':>10} {'entry $':>10} {'exit $':>10} {'pnl':>12}")
    for i, t in enumerate(report["trades"], 1):
        click.echo(f"{i:>5} {t['entry_time']:<26} {t['exit_time']:<26} {t['size']:>10g} {t['entry_price']:>10.2f} "
                   f"{t['exit_price']:>10.2f} {t['pnl']:>12.2f}")
    win = report["win_rate_pct"]
    click.echo(f"final equity {report['final_equity']:,.2f}  return {report['return_pct']:.2f} %  "
               f"max drawdown {report['max_drawdown_pct']:.2f} %  trades {report['trade_count']}  "
               f"win rate {'-' if win is None else f'{win:.1f} %'}  exposure {report['exposure_pct']:.1f} %  "
               f"commissions {report['commissions']:,.2f}")


def _data_env(data: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """The data service's settings under `up` (`--data` over TRADEFLOW_DATA_*, as `run data` reads them), checked
    here rather than in a child; and where its bars come from, in a line."""
    from services.data.service import build

    env = {"TRADEFLOW_DATA_SOURCE": "csv", "TRADEFLOW_DATA_FILES": ",".join(data), "TRADEFLOW_DATA_MODE": "batch"} \
        if data else {}
    return env, build({**os.environ, **env}).describe()


def _home(home: str | None, prefix: str) -> Path:
    if home:
        return Path(home)
    return Path("var") / f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _replica_counts(specs: tuple[str, ...]) -> dict[str, int]:
    counts = {}
    for spec in specs:
        name, sep, count = spec.partition("=")
        if not sep or name not in DURABLES or not count.isdigit() or not 1 <= int(count) <= 64:
            raise click.BadParameter(f"{spec!r} is not SERVICE=N (a service with a consumer, N from 1 to 64), "
                                     "e.g. strategy=2", param_hint="--replicas")
        counts[name] = int(count)
    return counts


_REPLICAS = click.option("--replicas", "replica_specs", multiple=True, metavar="SERVICE=N", envvar="TRADEFLOW_REPLICAS",
                         help="A service run as N replicas partitioned by symbol (TRADEFLOW_SYMBOLS), e.g. "
                              "strategy=2. Repeatable; TRADEFLOW_REPLICAS holds them space-separated.")


@cli.command()
@_REPLICAS
def init(replica_specs: tuple[str, ...]) -> None:
    """Declare the streams and every service's durable consumers on NATS_URL (the operator's user):
    what the services need before they start, since their own users may declare nothing. Idempotent:
    what is missing is created, what drifted is updated; a stream or consumer set up with settings
    tradeflow cannot update stops it with nothing changed. Settings as the services' (TRADEFLOW_*)."""
    from services.ops.provision import init as provision
    from services.runtime.config import RuntimeSettings
    from services.runtime.connect import TlsSettings
    from services.runtime.settings import load

    settings = load(RuntimeSettings, "TRADEFLOW_")
    tls = load(TlsSettings, "TRADEFLOW_").context(settings.nats_url)
    done = run_async(provision(settings, _replica_counts(replica_specs), tls))
    if done is not None:
        click.echo("\n".join(done) if done else "everything was in place: nothing changed")


@cli.command()
@_REPLICAS
def permissions(replica_specs: tuple[str, ...]) -> None:
    """Print nats.conf's authorization block: every user's NATS permissions (for the durables of the
    replicas given; without any, those nats.conf holds: strategy alone or as 2 replicas)."""
    from services.runtime.partition import Partition
    from services.runtime.permissions import COMPOSE_DURABLES, authorization

    counts = _replica_counts(replica_specs)
    durables = {name: [Partition(i, n, ()).durable(name) for i in range(n)] for name, n in counts.items() if n > 1}
    click.echo(authorization(durables if counts else COMPOSE_DURABLES), nl=False)


@cli.command()
@click.option("--data", multiple=True, metavar="SPEC",
              help="Feed bars: a bundled set (GOOG, EURUSD, BTCUSD) or SYMBOL=path.csv. Repeatable. Without it the "
                   "data service takes TRADEFLOW_DATA_* from the environment, as `tradeflow run data` does.")
@click.option("--home", type=click.Path(file_okay=False), help="Where the servers and logs keep their files.")
@click.option("--nats-port", type=click.IntRange(0, 65535), default=4222, show_default=True,
              help="Port for the NATS server it starts (taken only if free; 0 = any free port).")
@click.option("--redis-port", type=click.IntRange(0, 65535), default=6379, show_default=True,
              help="Port for the Redis server it starts (taken only if free; 0 = any free port).")
@click.option("--tls-dir", type=click.Path(file_okay=False, exists=True),
              help="Require TLS on NATS and Redis with ca.pem, server.pem and server-key.pem from this folder.")
@click.option("--nats-cluster", type=click.IntRange(1, 7), default=1, show_default=True,
              help="Run this many nats-server nodes clustered on loopback, streams replicated on up to 3 of them.")
def up(data: tuple[str, ...], home: str | None, nats_port: int, redis_port: int, tls_dir: str | None,
       nats_cluster: int) -> None:
    """Start NATS, Redis, the six services and the recorder on this machine; Ctrl-C stops them all.

    NATS_URL / REDIS_URL use existing servers instead of starting them.
    """
    from services.ops.stack import Stack

    settings = cli_settings()
    data_env, source = _data_env(data)

    stack = Stack(_home(home, "up"), nats_url=settings.nats_url, redis_url=settings.redis_url,
                  services=(*SERVICES, DASHBOARD), nats_cluster=nats_cluster,
                  env={"TRADEFLOW_STREAM_REPLICAS": str(min(3, nats_cluster))} if nats_cluster > 1 else {},
                  per_service_env={"data": data_env}, nats_port=nats_port, redis_port=redis_port,
                  tls_dir=Path(tls_dir) if tls_dir else None)

    def announce() -> None:
        click.echo(f"tradeflow is up (home {stack.home})")
        click.echo(f"  NATS   {stack.nats_url}    (the operator: everything; each service has its own user)")
        click.echo(f"         export NATS_URL={stack.nats_url}   # for tradeflow init/dlq/replay/events")
        click.echo(f"         nats context save tradeflow --server {stack.nats_url} --select   # for the nats CLI")
        if stack.nats_address:
            click.echo(f"         {stack.nats_url_for('injector')}    (the injector: publish test events, read)")
        if tls_dir:
            click.echo(f"         export TRADEFLOW_NATS_CA={stack.env['TRADEFLOW_NATS_CA']}   # NATS requires TLS")
        click.echo(f"  Redis  {stack.redis_url}")
        where = stack.store_location()
        hint = f"TRADEFLOW_DATA_DIR={stack.home} " if where.kind == "sqlite" else ""
        click.echo(f"  Store  {where}    ({hint}tradeflow events --last)")
        click.echo(f"  Data   {source}")
        click.echo(f"  Dashboard  {stack.dashboard_url()}")
        for name in stack.services:
            click.echo(f"  {name:<10} http://127.0.0.1:{stack.http_port(name)}/metrics")

    _run_until_stopped(stack.start, stack.stop, announce)


@cli.command()
@click.option("--data", multiple=True, default=("GOOG",), show_default=True, metavar="SPEC",
              help="A bundled set (GOOG, EURUSD, BTCUSD) or SYMBOL=path.csv. Repeatable.")
@click.option("--home", type=click.Path(file_okay=False), help="Run directory (default: a new one under var/).")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Give up if the pipeline has not drained after this many seconds.")
@trading_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: backtest's statistics and trades, plus the run's counts.")
def demo(data, home, timeout, strategy, params, cash, commission, sizing, fill_price, as_json) -> None:
    """Run real historical bars through the six live services, print a summary, shut down."""
    from services.ops.demo import render, run_demo

    env = _trading_env(strategy, params, cash, commission, sizing, fill_price)
    with Progress() as progress:
        summary = run_async(run_demo(_home(home, "demo"), data, timeout, _data_env(data)[0], env, progress))
    if summary is None:
        sys.exit(130)
    if as_json:
        click.echo(orjson.dumps({**summary.pop("portfolio"), **summary}).decode())
    else:
        click.echo(render(summary))


@cli.command()
@click.option("--data", multiple=True, required=True, metavar="SPEC",
              help="A bundled set (GOOG, EURUSD, BTCUSD), a CSV path or SYMBOL=path.csv. Repeatable.")
@trading_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: statistics and trades.")
def backtest(data, strategy, params, cash, commission, sizing, fill_price, as_json) -> None:
    """Run the agents' logic over OHLCV files in this process, with no servers; print statistics and trades."""
    from services.offline.backtest import run_backtest

    env = _trading_env(strategy, params, cash, commission, sizing, fill_price)
    _print_report(run_backtest(tuple(data), env), as_json)


@cli.command()
@click.argument("subject")
@click.argument("body")
@click.option("--id", "event_id", help="Nats-Msg-Id to send (default: none, as `nats pub`).")
@click.option("--no-check", is_flag=True, help="Send BODY as it is, even if it would be dead-lettered.")
def publish(subject: str, body: str, event_id: str | None, no_check: bool) -> None:
    """Publish one JSON BODY ('-' reads stdin) to SUBJECT on JetStream, as `nats pub` would (no envelope headers)."""
    from contracts.codec import decode

    raw = sys.stdin.buffer.read() if body == "-" else body.encode()
    if not no_check:
        try:
            decode(subject, raw)
        except TradeflowError as exc:
            fail(f"not sent: {exc} (use --no-check to send it anyway)")

    async def main():

        nc = await connect()
        try:
            ack = await nc.jetstream().publish(subject, raw, headers={"Nats-Msg-Id": event_id} if event_id else None)
        finally:
            await nc.close()
        click.echo(f"published to {subject}: stream {ack.stream} seq {ack.seq}"
                   f"{' (duplicate)' if ack.duplicate else ''}")

    run_async(main())


@cli.command()
@click.argument("subject", default=">")
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many events.")
def tail(subject: str, count: int | None) -> None:
    """Print live events on SUBJECT (a NATS wildcard, e.g. 'executed_ready.>') as JSON lines."""
    from contracts.codec import decode

    async def main():

        nc = await connect()
        seen = 0
        done = asyncio.Event()

        async def on_msg(msg):
            nonlocal seen
            line: dict = {"subject": msg.subject}
            try:
                inc = decode(msg.subject, msg.data, msg.headers)
                line.update(id=inc.id, source=inc.envelope.source, trace=inc.envelope.trace_id,
                            event=msgspec.to_builtins(inc.event))
            except TradeflowError as exc:
                line.update(error=str(exc), body=msg.data[:200].decode(errors="replace"))
            click.echo(orjson.dumps(line).decode())
            seen += 1
            if count and seen >= count:
                done.set()

        await nc.subscribe(subject, cb=on_msg)
        try:
            await done.wait()
        finally:
            await nc.close()

    run_async(main())


def _status_table(state: dict) -> list[str]:
    """`tradeflow status` as text: services, consumers, streams, dead letters."""

    def table(headers: list[str], rows: list[list[object]]) -> list[str]:
        cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
        widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in cells]

    services = state["services"]
    lines = [f"services ({len(services)} answering $SRV.INFO)"]
    lines += table(["SERVICE", "ID", "VERSION", "PID", "HTTP", "CONSUMER", "IN", "OUT", "DEAD LETTERS"],
                   [[s["name"], s["id"], s["version"], s["pid"], s["http_port"], s["consumer"], s["messages_in"],
                     s["messages_out"], s["dead_letters"]] for s in services]) if services else ["  none"]
    lines += ["", "consumers on PIPELINE"]
    lines += table(["CONSUMER", "PENDING", "ACK PENDING", "REDELIVERED", "PAUSED", "OLDEST WAITING", "CONSUMES"],
                   [[c["name"], c["pending"], c["ack_pending"], c["redelivered"], "yes" if c["paused"] else "no",
                     f"{c['oldest_waiting_s']:g} s" + (" OVERDUE" if c["overdue"] else ""), c["consumes"]]
                    for c in state["consumers"]]) if state["consumers"] else ["  none"]
    late = [c for c in state["consumers"] if c["overdue"]]
    if late:
        deadline = f"TRADEFLOW_JOURNEY_TIMEOUT={state['journey_timeout']:g} s"
        lines += ["", f"overdue (past the journey deadline, {deadline}): " + ", ".join(
            f"{c['name']} (stream seq {c['oldest_waiting_seq']} has waited {c['oldest_waiting_s']:g} s)" for c in late)]
    lines += ["", "streams"]
    lines += table(["STREAM", "MESSAGES", "BYTES", "FIRST SEQ", "LAST SEQ", "CONSUMERS"],
                   [[t["name"], t["messages"], t["bytes"], t["first_seq"], t["last_seq"], t["consumers"]]
                    for t in state["streams"]]) if state["streams"] else ["  none"]
    dead = state["dead_letters"]
    lines += ["", "dead letters: " + (", ".join(f"{k} {v}" for k, v in dead.items()) if dead else "none")]
    return lines


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--wait", type=click.FloatRange(0.05, 30), default=0.5, show_default=True,
              help="Seconds to wait for services to answer.")
@click.option("--journey-timeout", type=click.FloatRange(min=0, min_open=True), envvar="TRADEFLOW_JOURNEY_TIMEOUT",
              default=300, show_default=True,
              help="A consumer whose oldest waiting event has waited longer than this many seconds is overdue.")
def status(as_json: bool, wait: float, journey_timeout: float) -> None:
    """Services (found by the NATS micro protocol), consumers and their pending counts, how long their oldest
    waiting event has waited (overdue past the journey deadline), streams, DLQ depth. Exits 3 when a
    consumer is overdue."""
    from services.ops.observe import status as read_status

    async def main():
        nc = await connect()
        try:
            return await read_status(nc, wait, journey_timeout)
        finally:
            await nc.close()

    state = run_async(main())
    if state is None:
        return
    click.echo(orjson.dumps(state, option=orjson.OPT_INDENT_2).decode() if as_json else "\n".join(_status_table(state)))
    if any(c["overdue"] for c in state["consumers"]):
        sys.exit(3)


@cli.group()
def deploy() -> None:
    """Run a deployment file's services on this machine."""


@deploy.command("local")
@click.option("-f", "--file", "files", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A Compose file; repeat to merge overrides (default: deploy/compose/compose.yaml).")
@click.option("--profile", "profiles", multiple=True,
              help="Activate a Compose profile (scaled, cluster, postgres, ...).")
@click.option("--env-file", type=click.Path(dir_okay=False, exists=True),
              help="Variables for the files (default: .env beside the first file, if any).")
@click.option("--home", type=click.Path(file_okay=False),
              help="Where logs and volumes go (default: var/deploy-<time>).")
def deploy_local(files: tuple[str, ...], profiles: tuple[str, ...], env_file: str | None, home: str | None) -> None:
    """Run a Compose file's services as local processes (nats-server, redis-server, PostgreSQL, tradeflow),
    each with the environment the file gives it, until Ctrl-C: the file exercised without a container engine."""
    from services.ops.deploy_local import DEFAULT_FILE, LocalDeployment

    deployment = LocalDeployment(files=[Path(f) for f in files] or [DEFAULT_FILE], home=_home(home, "deploy"),
                                 profiles=profiles, env_file=Path(env_file) if env_file else None)

    def announce() -> None:
        click.echo("\n".join(deployment.announcement()))

    _run_until_stopped(deployment.start, deployment.stop, announce)


def _run_until_stopped(start, stop, announce) -> None:
    """Start, say what is up, wait for Ctrl-C or SIGTERM, then stop everything (even when the start failed)."""

    async def main():
        try:
            await start()
            announce()
            click.echo("Ctrl-C to stop.")
            await asyncio.Event().wait()
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(stop())

    run_async(main())


for command in (*COMMANDS, dlq):
    cli.add_command(command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="tradeflow")

