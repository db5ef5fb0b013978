"""The benchmark suite: tradeflow beside the raw nats-py ceiling and the FastStream peer, in one run.

    bench/run [--systems raw,faststream,tradeflow] [--bars 20000] [--symbols 5] [--reps 3]
              [--latency-bars 1000] [--rate 200] [--scale-symbols 1,5,50,500] [--scale-replicas 1,2] [--no-scaling]
              [--time-limit 1800] [--nats-port N] [--redis-port N] [--results bench/results]

Every repetition of every system gets its own nats-server (JetStream, file store in a temporary
directory) and redis-server, started here, and the same bars. One repetition is two phases on one
deployment:

  throughput  `--bars` bars over `--symbols` symbols, published as fast as the server takes them
              (1,024 PubAcks in flight), with the data service's ids and envelope; the clock runs
              from the first publish until the pipeline's consumers (audit and the hops before it)
              are idle and the stream has stopped growing. Throughput is the stream's events (bars
              and everything they caused) over that time. tradeflow's recorder is timed apart: how
              long after the pipeline's last event it too is idle (its lag after the last bar).
              CPU seconds and peak RSS are read (psutil) for each of the
              system's own processes over the same span (the servers are reported apart).
  latency     `--latency-bars` more bars of the same symbols (their windows are warm), paced at
              `--rate` per second; tick-to-trade is from just before a bar's publish until its
              fill reaches the stream that audit reads (a core subscription on executed_ready.>).

tradeflow runs all six services and the recorder, every feature on, execution filling at the
signal bar's close (the two others fill at once too). Each figure is the median of `--reps`
repetitions, printed with its min and max; the run is written as JSON to `--results`.

Scaling (tradeflow only): throughput and p99 against the number of symbols (`--scale-symbols`)
and against replicas of the strategy service (`--scale-replicas`), which share the symbols out
(TRADEFLOW_PARTITION, services/runtime/partition.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import click
import msgspec
import nats
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from contracts.envelope import trace_id_for  # noqa: E402
from contracts.events import BarReceived  # noqa: E402
from contracts.subjects import PIPELINE_STREAM, stage_of  # noqa: E402
from services.data.service import bar_id  # noqa: E402
from services.data.sources import synthetic  # noqa: E402
from services.ops.stack import Stack  # noqa: E402
from services.ops.supervisor import Proc, port_open  # noqa: E402
from services.runtime.config import RuntimeSettings  # noqa: E402
from services.runtime.publish import Publisher, envelope_out  # noqa: E402
from services.runtime.topology import ensure_streams  # noqa: E402

SYSTEMS = ("raw", "faststream", "tradeflow")
HOPS = ("strategy", "quant", "risk", "execution", "audit")
PEERS = {"raw": ROOT / "bench" / "baselines" / "raw.py",
         "faststream": ROOT / "bench" / "peers" / "faststream_pipeline.py"}
PREFIX = {"raw": "raw", "faststream": "fs"}
SERVERS = ("nats-server", "redis-server")
# tradeflow's settings for the bench: fill at the signal bar's close, as the other two do
TRADEFLOW_ENV = {"TRADEFLOW_EXECUTION_FILL_PRICE": "close"}
FIGURES = ("throughput_eps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "rss_mb", "cpu_s_per_1k")


class BenchError(Exception):
    """A bad option or a run that cannot go on; printed as one line."""


class Fill(msgspec.Struct):
    symbol: str
    ts: datetime


@dataclass
class Deployment:
    """One system on its own servers: the processes to measure and the consumers to wait for."""

    system: str
    stack: Stack
    durables: list[str] = field(default_factory=list)

    def procs(self) -> dict[str, Proc]:
        return {n: p for n, p in self.stack.supervisor.procs.items() if n not in SERVERS}

    def servers(self) -> dict[str, Proc]:
        return {n: p for n, p in self.stack.supervisor.procs.items() if n in SERVERS}


def new_stack(system: str, home: Path, args, symbols: Sequence[str] = (), replicas: int = 1) -> Stack:
    if system == "tradeflow":
        return Stack(home, env=dict(TRADEFLOW_ENV), nats_port=args.nats_port, redis_port=args.redis_port,
                     replicas={"strategy": replicas}, symbols=tuple(symbols))
    return Stack(home, services=(), nats_port=args.nats_port, redis_port=args.redis_port)


async def deploy(system: str, stack: Stack) -> Deployment:
    """Servers, streams and the system's processes, each consumer in place (the caller stops the stack,
    whatever happens here)."""
    await stack.start()
    if system == "tradeflow":
        return Deployment(system, stack, stack.durables)
    nc = await nats.connect(stack.nats_url)
    try:
        await ensure_streams(nc.jsm(), RuntimeSettings())
        for hop in HOPS:
            argv = [sys.executable, str(PEERS[system]), hop, stack.nats_url]
            name = f"{PREFIX[system]}-{hop}"
            await stack.supervisor.start(Proc(name, argv, dict(os.environ), stack.logs / f"{name}.log", restart=False))
        durables = [f"{PREFIX[system]}-{hop}" for hop in HOPS]
        deadline = time.monotonic() + 60
        while not set(durables) <= {c.name for c in await nc.jsm().consumers_info(PIPELINE_STREAM)}:
            dead = [n for n, p in stack.supervisor.procs.items() if p.process and p.process.returncode is not None]
            if dead or time.monotonic() > deadline:
                raise BenchError(f"{system}: {', '.join(dead) or 'a hop'} did not start; see {stack.logs}")
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    return Deployment(system, stack, durables)


class Meter:
    """CPU seconds and peak RSS of a set of processes between start() and stop()."""

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.ps = {name: psutil.Process(p.pid) for name, p in procs.items() if p.pid}
        self.cpu0: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.rss: dict[str, float] = {name: 0.0 for name in self.ps}
        self._task: asyncio.Task | None = None

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, p in self.ps.items():
            try:
                t = p.cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                out[name] = self.cpu0.get(name, 0.0)
        return out

    async def _sample(self) -> None:
        while True:
            for name, p in self.ps.items():
                try:
                    self.rss[name] = max(self.rss[name], p.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            await asyncio.sleep(0.2)

    def start(self) -> None:
        self.cpu0 = self._cpu()
        self._task = asyncio.create_task(self._sample(), name="meter")

    async def stop(self) -> None:
        end = self._cpu()
        self.cpu = {name: end[name] - self.cpu0[name] for name in end}
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def feed(nc, bars: Sequence[BarReceived]) -> None:
    """Publish every bar as the data service would (its id, envelope and subject), 1,024 in flight."""
    publisher = Publisher(nc.jetstream(), timeout=30, window=1024)
    for start in range(0, len(bars), 2048):
        await publisher.publish([_as_data(b) for b in bars[start:start + 2048]])


def _as_data(bar: BarReceived):
    return envelope_out(bar, service="data", event_id=bar_id(bar), trace_id=trace_id_for(bar_id(bar)),
                        causation_id=None)


async def watch_drain(jsm, durables: Sequence[str], timeout: float, poll: float = 0.05) -> dict[str, float]:
    """Wait until the stream stops growing and every consumer is idle; for each consumer, the monotonic
    time it was last seen busy. A stage that makes no progress for `timeout` seconds is a BenchError."""
    last_busy = {d: time.monotonic() for d in durables}
    last_seq, idle_polls, progress_at, last_done = -1, 0, time.monotonic(), -1
    while True:
        seq = (await jsm.stream_info(PIPELINE_STREAM)).state.last_seq
        busy, done = {}, seq
        for d in durables:
            info = await jsm.consumer_info(PIPELINE_STREAM, d)
            busy[d] = (info.num_pending or 0) + (info.num_ack_pending or 0)
            done += info.delivered.stream_seq + info.ack_floor.stream_seq
        now = time.monotonic()
        for d, n in busy.items():
            if n:
                last_busy[d] = now
        if done != last_done:
            progress_at, last_done = now, done
        if seq == last_seq and not any(busy.values()):
            idle_polls += 1
            if idle_polls >= 2:
                return last_busy
        else:
            idle_polls = 0
        if now - progress_at > timeout:
            stuck = ", ".join(f"{d} ({n:,} behind)" for d, n in busy.items() if n) or "none behind"
            raise BenchError(f"no progress for {timeout:.0f}s: {stuck}")
        last_seq = seq
        await asyncio.sleep(poll)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def throughput(dep: Deployment, bars: Sequence[BarReceived], args) -> dict:
    nc = await nats.connect(dep.stack.nats_url)
    jsm = nc.jsm()
    try:
        before = (await jsm.stream_info(PIPELINE_STREAM)).state.messages
        meter, servers = Meter(dep.procs()), Meter(dep.servers())
        meter.start()
        servers.start()
        started = time.monotonic()
        await feed(nc, bars)
        last_busy = await watch_drain(jsm, dep.durables, args.stall)
        ended = max(t for d, t in last_busy.items() if d != "recorder")   # until audit has them all
        await meter.stop()
        await servers.stop()
        events = (await jsm.stream_info(PIPELINE_STREAM)).state.messages - before
    finally:
        await nc.close()
    seconds = max(ended - started, 1e-6)
    out = {"events": events, "seconds": seconds, "throughput_eps": events / seconds,
           "cpu_s_per_1k": sum(meter.cpu.values()) / events * 1000,
           "server_cpu_s_per_1k": sum(servers.cpu.values()) / events * 1000,
           "cpu_s_per_1k_all": (sum(meter.cpu.values()) + sum(servers.cpu.values())) / events * 1000,
           "rss_mb": max(meter.rss.values()), "rss_mb_total": sum(meter.rss.values()),
           "cpu_s": {k: round(v, 3) for k, v in meter.cpu.items()},
           "server_cpu_s": {k: round(v, 3) for k, v in servers.cpu.items()},
           "rss_mb_by_process": {k: round(v, 1) for k, v in meter.rss.items()},
           "consumer_done_s": {d: round(t - started, 2) for d, t in last_busy.items()}}
    if "recorder" in last_busy:
        pipeline_done = max(t for d, t in last_busy.items() if d != "recorder")
        out["recorder_lag_after_last_s"] = max(0.0, last_busy["recorder"] - pipeline_done)
    return out


STAGES = ("signals_ready", "validated_ready", "approved_ready", "executed_ready")


async def latency(dep: Deployment, bars: Sequence[BarReceived], args) -> dict:
    """Tick-to-trade of bars paced at `args.rate`/s: publish to fill in the stream; and the p50 and p99 of the
    time to each stage on the way (where the latency goes)."""
    nc = await nats.connect(dep.stack.nats_url)
    js = nc.jetstream()
    sent: dict[tuple[str, datetime], float] = {}
    arrived: dict[str, dict[tuple[str, datetime], float]] = {stage: {} for stage in STAGES}
    decode = msgspec.json.Decoder(Fill).decode

    async def on_event(msg) -> None:
        now = time.monotonic()
        event = decode(msg.data)
        arrived[stage_of(msg.subject)].setdefault((event.symbol, event.ts), now)

    subs = [await nc.subscribe(f"{stage}.>", cb=on_event) for stage in STAGES]
    meter, servers = Meter(dep.procs()), Meter(dep.servers())
    meter.start()
    servers.start()
    try:
        start = time.monotonic()
        for i, bar in enumerate(bars):
            delay = start + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            out = _as_data(bar)
            sent[(bar.symbol, bar.ts)] = time.monotonic()
            await js.publish(out.subject, out.body, headers=out.headers, timeout=10)
        await watch_drain(nc.jsm(), dep.durables, args.stall)
        await nc.flush()
    finally:
        await meter.stop()
        await servers.stop()
        for sub in subs:
            await sub.unsubscribe()
        await nc.close()
    fills = [key for key in arrived["executed_ready"] if key in sent]
    if not fills:
        raise BenchError(f"{dep.system}: no fills in the latency run ({len(bars)} bars); give more --latency-bars")
    ms = [(arrived["executed_ready"][key] - sent[key]) * 1000 for key in fills]
    to_stage = {q: {stage: percentile([(arrived[stage][k] - sent[k]) * 1000 for k in fills if k in arrived[stage]], q)
                    for stage in STAGES if any(k in arrived[stage] for k in fills)} for q in (50, 99)}
    return {"fills": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99), "max_ms": max(ms), "p50_ms_to_stage": to_stage[50],
            "p99_ms_to_stage": to_stage[99],
            "light_cpu_ms_per_bar": sum(meter.cpu.values()) / len(bars) * 1000,
            "light_cpu_ms_per_bar_all": (sum(meter.cpu.values()) + sum(servers.cpu.values())) / len(bars) * 1000,
            "light_cpu_ms_per_bar_by_process": {k: round(v / len(bars) * 1000, 3)
                                                for k, v in {**meter.cpu, **servers.cpu}.items()}}


def store_reads(home: Path) -> dict:
    """Store read events/s (the replay read) and whatif bars/s over what the recorder kept."""
    from replay.store import open_store
    from replay.whatif import load_recorded, whatif

    path = next(home.rglob("events.sqlite"))

    async def read() -> tuple[int, float, object]:
        async with open_store(path, read_only=True) as store:
            t = time.perf_counter()
            rows = [row async for row in store.query(subjects=["data_ready.>"], by="event_ts")]
            read_s = time.perf_counter() - t
            recorded = await load_recorded(store)
        return len(rows), read_s, recorded

    rows, read_s, recorded = asyncio.run(read())
    t = time.perf_counter()
    whatif(recorded, TRADEFLOW_ENV)
    whatif_s = time.perf_counter() - t
    return {"store_read_eps": rows / read_s, "whatif_bars_per_s": len(recorded.bars) / whatif_s}


async def loop_lag_p99(dep: Deployment) -> float | None:
    """The largest p99 event-loop lag (ms, from the histogram buckets) among tradeflow's services."""
    worst = None
    for proc in dep.procs().values():
        if not proc.http_port:
            continue
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"http://127.0.0.1:{proc.http_port}/metrics") as resp:
                text = await resp.text()
        buckets = sorted((float(le), float(v)) for le, v in _buckets(text, "tradeflow_event_loop_lag_seconds"))
        if not buckets or not buckets[-1][1]:
            continue
        total = buckets[-1][1]
        p99 = next(le for le, count in buckets if count >= 0.99 * total)
        worst = max(worst or 0.0, p99 * 1000)
    return worst


def _buckets(text: str, metric: str):
    for line in text.splitlines():
        if line.startswith(f"{metric}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            yield (le if le != "+Inf" else "inf"), line.rsplit(" ", 1)[1]


def split_bars(symbols: Sequence[str], total: int, extra: int, seed: int = 7) -> tuple[list, list]:
    """`total` bars over `symbols` for throughput, then `extra` later bars of the same symbols."""
    per = -(-total // len(symbols))
    more = -(-extra // len(symbols))
    bars = synthetic(symbols, per + more, seed=seed)
    cut = bars[per * len(symbols) - 1].ts if per else None
    first = [b for b in bars if cut is not None and b.ts <= cut][:total]
    rest = [b for b in bars if cut is None or b.ts > cut][:extra]
    return first, rest


async def one_rep(system: str, args, symbols: Sequence[str], with_store: bool = False, replicas: int = 1) -> dict:
    first, rest = split_bars(symbols, args.bars, args.latency_bars)
    with tempfile.TemporaryDirectory(prefix=f"tradeflow-bench-{system}-") as tmp:
        stack = new_stack(system, Path(tmp), args, symbols, replicas)
        try:
            dep = await deploy(system, stack)
            result = await throughput(dep, first, args)
            if system == "tradeflow":
                result["loop_lag_p99_ms"] = await loop_lag_p99(dep)
            result.update(await latency(dep, rest, args))
        finally:
            await stack.stop()
        if with_store:
            result.update(await asyncio.get_running_loop().run_in_executor(None, store_reads, Path(tmp)))
    return result


def summarise(reps: list[dict]) -> dict:
    """Median, min and max of every numeric figure over the repetitions."""
    out = {}
    for key in reps[0]:
        values = [r[key] for r in reps if isinstance(r.get(key), (int, float)) and r.get(key) is not None]
        if values and len(values) == len(reps):
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    light = [r["light_cpu_ms_per_bar_by_process"] for r in reps if r.get("light_cpu_ms_per_bar_by_process")]
    if light:
        out["light_by_process"] = {k: statistics.median(r.get(k, 0.0) for r in light) for k in light[0]}
    return out


def ratios(systems: dict[str, dict]) -> dict:
    tf = systems.get("tradeflow")
    out = {}
    if not tf:
        return out
    for peer in ("raw", "faststream"):
        if peer in systems:
            p = systems[peer]
            out[f"tradeflow/{peer}"] = {
                "throughput": tf["throughput_eps"]["median"] / p["throughput_eps"]["median"],
                "p99": tf["p99_ms"]["median"] / p["p99_ms"]["median"],
                "cpu_per_event": tf["cpu_s_per_1k"]["median"] / p["cpu_s_per_1k"]["median"],
                "p50": tf["p50_ms"]["median"] / p["p50_ms"]["median"],
                "cpu_per_event_all": tf["cpu_s_per_1k_all"]["median"] / p["cpu_s_per_1k_all"]["median"],
                "light_cpu_per_bar_all": (tf["light_cpu_ms_per_bar_all"]["median"]
                                          / p["light_cpu_ms_per_bar_all"]["median"]),
            }
    return out


def fmt(fig: dict, digits: int = 0) -> str:
    return f"{fig['median']:,.{digits}f} ({fig['min']:,.{digits}f}–{fig['max']:,.{digits}f})"


def table(run: dict) -> str:
    s = run["systems"]
    lines = [f"{run['bars']:,} bars over {run['symbols']} symbols; latency: {run['latency_bars']:,} bars at "
             f"{run['rate']:g}/s; median (min–max) of {run['reps']} repetitions; {run['date']}, {run['machine']}",
             "",
             "| system | events/s | p50 ms | p95 ms | p99 ms | max ms | RSS MB (largest process) | CPU s / 1k events |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, f in s.items():
        lines.append(f"| {name} | {fmt(f['throughput_eps'])} | {fmt(f['p50_ms'], 1)} | {fmt(f['p95_ms'], 1)} | "
                     f"{fmt(f['p99_ms'], 1)} | {fmt(f['max_ms'], 1)} | {fmt(f['rss_mb'])} | "
                     f"{fmt(f['cpu_s_per_1k'], 2)} |")
    if run["ratios"]:
        lines += ["", "| ratio | throughput | p50 latency | p99 latency | CPU per event | CPU per event, servers "
                      "included | light-load CPU per bar, servers included |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, r in run["ratios"].items():
            lines.append(f"| {name} | {r['throughput']:.2f}× | {r['p50']:.2f}× | {r['p99']:.2f}× | "
                         f"{r['cpu_per_event']:.2f}× | {r['cpu_per_event_all']:.2f}× | "
                         f"{r['light_cpu_per_bar_all']:.2f}× |")
    light = {name: f["light_by_process"] for name, f in s.items() if f.get("light_by_process")}
    if light:
        lines += ["", f"| light load ({run['rate']:g} bars/s), CPU ms per bar | process: median of the repetitions |",
                  "|---|---|"]
        for name, by in light.items():
            lines.append(f"| {name} | " + ", ".join(f"{k} {v:.2f}" for k, v in by.items()) + " |")
    tf = s.get("tradeflow", {})
    extra = [(k, label, d) for k, label, d in (
        ("recorder_lag_after_last_s", "recorder lag after the pipeline's last event, s", 2),
        ("loop_lag_p99_ms", "event-loop lag p99 under load (worst service), ms", 1),
        ("store_read_eps", "store read (replay read of data_ready.>), events/s", 0),
        ("whatif_bars_per_s", "whatif over the recorded run, bars/s", 0)) if k in tf]
    if extra:
        lines += ["", "| tradeflow | median (min–max) |", "|---|---:|"]
        lines += [f"| {label} | {fmt(tf[k], d)} |" for k, label, d in extra]
    if run.get("replicas"):
        lines += ["", f"| tradeflow, strategy replicas ({run['symbols']} symbols) | events/s | p99 ms | "
                      "CPU s / 1k events |", "|---:|---:|---:|---:|"]
        for n, f in run["replicas"].items():
            lines.append(f"| {n} | {fmt(f['throughput_eps'])} | {fmt(f['p99_ms'], 1)} | {fmt(f['cpu_s_per_1k'], 2)} |")
    if run.get("scaling"):
        lines += ["", "| tradeflow, symbols | events/s | p99 ms | CPU s / 1k events |", "|---:|---:|---:|---:|"]
        for n, f in run["scaling"].items():
            lines.append(f"| {n} | {fmt(f['throughput_eps'])} | {fmt(f['p99_ms'], 1)} | {fmt(f['cpu_s_per_1k'], 2)} |")
    return "\n".join(lines)


def machine() -> str:
    return (f"{platform.node()}, {psutil.cpu_count()} cores, "
            f"{platform.python_implementation()} {platform.python_version()}")


async def run(args) -> dict:
    symbols = [f"SYM{i}" for i in range(args.symbols)]
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "bars": args.bars, "symbols": args.symbols, "latency_bars": args.latency_bars, "rate": args.rate,
              "reps": args.reps, "systems": {}, "ratios": {}, "scaling": {}, "replicas": {}}
    progress = Runs(args.reps * (len(args.systems) + len(args.scale_symbols) + len(args.scale_replicas)))
    for system in args.systems:
        reps = []
        for rep in range(args.reps):
            progress.next(f"{system}: repetition {rep + 1} of {args.reps}")
            reps.append(await one_rep(system, args, symbols, with_store=system == "tradeflow"))
        result["systems"][system] = summarise(reps) | {"runs": reps}
    result["ratios"] = ratios(result["systems"])
    for n in args.scale_symbols:
        reps = []
        for rep in range(args.reps):
            progress.next(f"tradeflow, {n} symbols: repetition {rep + 1} of {args.reps}")
            reps.append(await one_rep("tradeflow", args, [f"SYM{i}" for i in range(n)]))
        result["scaling"][str(n)] = summarise(reps) | {"runs": reps}
    for n in args.scale_replicas:
        reps = []
        for rep in range(args.reps):
            progress.next(f"tradeflow, {n} strategy replicas: repetition {rep + 1} of {args.reps}")
            reps.append(await one_rep("tradeflow", args, symbols, replicas=n))
        result["replicas"][str(n)] = summarise(reps) | {"runs": reps}
    progress.close()
    return result


class Runs:
    """The run's progress on standard error: a bar over every repetition on a terminal (click's), else a
    line as each one starts (for logs)."""

    def __init__(self, total: int) -> None:
        self.bar = click.progressbar(length=total, file=sys.stderr, show_pos=True) if sys.stderr.isatty() else None
        self.started = 0
        if self.bar is not None:
            self.bar.__enter__()

    def next(self, what: str) -> None:
        if self.bar is None:
            print(what, file=sys.stderr, flush=True)
            return
        if self.started:
            self.bar.update(1)
        self.started += 1
        self.bar.label = what

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.__exit__(None, None, None)


def _csv(kind, allowed=None):
    def parse(text: str):
        items = [kind(x) for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one")
        if allowed is not None and (bad := [x for x in items if x not in allowed]):
            raise argparse.ArgumentTypeError(f"unknown {', '.join(map(str, bad))}; choose from {', '.join(allowed)}")
        return items
    return parse


def _at_least(low: float, kind=int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # one line, not the usage block: the usage is under --help
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--systems", type=_csv(str, SYSTEMS), default=list(SYSTEMS), help="comma-separated")
    p.add_argument("--bars", type=_at_least(1), default=20_000, help="bars in the throughput phase")
    p.add_argument("--symbols", type=_at_least(1), default=5)
    p.add_argument("--reps", type=_at_least(1), default=3, help="repetitions; figures are their median")
    p.add_argument("--latency-bars", type=_at_least(1), default=1_000)
    p.add_argument("--rate", type=_at_least(1, float), default=200.0, help="latency phase bars per second")
    p.add_argument("--scale-symbols", type=_csv(_at_least(1)), default=[1, 5, 50, 500])
    p.add_argument("--scale-replicas", type=_csv(_at_least(1)), default=[1, 2],
                   help="strategy replicas (partitioned by symbol) for tradeflow's scaling runs")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling runs")
    p.add_argument("--time-limit", type=_at_least(1, float), default=1800.0, help="seconds for the whole run")
    p.add_argument("--stall", type=_at_least(1, float), default=60.0,
                   help="seconds without progress after which a stage counts as stuck")
    p.add_argument("--nats-port", type=_at_least(1), default=0, help="default: a free port")
    p.add_argument("--redis-port", type=_at_least(1), default=0, help="default: a free port")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="folder for the JSON file")
    args = p.parse_args(argv)
    if args.no_scaling:
        args.scale_symbols = args.scale_replicas = []
    if max(args.scale_replicas, default=1) > args.symbols:
        p.error(f"--scale-replicas: {max(args.scale_replicas)} strategy replicas cannot share {args.symbols} symbols")
    for flag, port in (("--nats-port", args.nats_port), ("--redis-port", args.redis_port)):
        if port > 65535:
            p.error(f"{flag}: {port} is not a port")
        if port and port_open("127.0.0.1", port):
            p.error(f"{flag}: port {port} is in use")
    if args.nats_port and args.nats_port == args.redis_port:
        p.error("--nats-port and --redis-port must differ")
    if "faststream" in args.systems and not _has_faststream():
        p.error("the FastStream peer needs faststream: pip install -e '.[bench]'")
    return args


def _has_faststream() -> bool:
    import importlib.util
    return importlib.util.find_spec("faststream") is not None


async def main_async(args) -> dict:
    try:
        async with asyncio.timeout(args.time_limit):
            return await run(args)
    except TimeoutError:
        raise BenchError(f"stopped at the time limit ({args.time_limit:g}s, --time-limit); "
                         f"everything it started has been stopped") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = _run_loop(args)
    except BenchError as exc:
        print(f"bench/run: {exc}", file=sys.stderr)
        return 1
    print(table(result))
    args.results.mkdir(parents=True, exist_ok=True)
    path = args.results / f"{result['date'].replace(':', '')}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwritten: {path}")
    return 0


def _run_loop(args) -> dict:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main_async(args))
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
