"""A service's life: open its files and stores, connect, declare topology, rebuild state, serve, consume;
drain on SIGTERM."""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import msgspec
import psutil
from aiohttp import web
from nats.aio.client import Client as NATS
from redis.asyncio import Redis

from contracts import envelope as ce
from contracts.errors import ConfigError
from contracts.events import Event
from contracts.subjects import ADVISORY_STREAM, PIPELINE_STREAM, stage_of
from services.runtime.advisories import DeadLetterCapture, advisory_consumer_config
from services.runtime.agent import Agent, AgentContext, Component, Monitor, Producer, Run
from services.runtime.build import version
from services.runtime.cache import Cache, CacheSettings
from services.runtime.config import RuntimeSettings
from services.runtime.connect import (
    REDIS_UNAVAILABLE,
    PermissionWatch,
    RedisTlsSettings,
    TlsSettings,
    connect_nats,
    connect_redis,
    redis_location,
)
from services.runtime.dedup import DedupRegistry
from services.runtime.http import start_http
from services.runtime.journey import oldest_waiting, overdue
from services.runtime.logs import setup_logging
from services.runtime.looplag import LoopLag
from services.runtime.market import MarketClock
from services.runtime.metrics import Metrics
from services.runtime.micro import start_micro
from services.runtime.partition import Partition
from services.runtime.pause import pause
from services.runtime.permissions import inbox_prefix
from services.runtime.pool import ComputePool, PoolSettings
from services.runtime.publish import Publisher, envelope_out
from services.runtime.rebuild import rebuild_state
from services.runtime.settings import load
from services.runtime.store import store_location
from services.runtime.tasks import Every, Priority, TaskManager
from services.runtime.topology import await_provisioned, consumer_config
from services.runtime.tracing import Tracing
from services.runtime.worker import Worker

log = logging.getLogger(__name__)

EXIT_FAILED = 70   # a task failed for good (EX_SOFTWARE): the supervisor or the container restarts it
EXIT_RESTART = 75  # asked to restart (EX_TEMPFAIL): the supervisor or the container starts it again


class Service:
    """Runs one component until SIGTERM: an agent (a consumer), a producer or a monitor."""

    def __init__(self, component: Component, settings: RuntimeSettings) -> None:
        self.component = component
        self.stage = component if isinstance(component, Agent) else None   # what consumes the pipeline
        self.settings = settings
        self.producer: Run | None = component.produce if isinstance(component, Producer) else \
            component.watch if isinstance(component, Monitor) else None
        self.name = component.name
        self.consumer = self.name           # its durable; a partitioned replica has one of its own
        stage = self.stage
        if settings.partition is not None:
            if stage is None or not stage.options.partitionable:
                raise ConfigError(f"TRADEFLOW_PARTITION: {self.name} keeps state across symbols and runs as one "
                                  "replica (only strategy and quant can be partitioned)")
            partition = Partition.parse(settings.partition, settings.symbols)
            self.consumer = partition.durable(self.name)
            stage.consumes = partition.filters(stage.consumes)   # its consumer, its rebuild: its symbols only
        self.metrics = Metrics(self.name)
        self.stop = asyncio.Event()
        self._closing = asyncio.Event()   # set when the service shuts down: background loops end
        self.failure: BaseException | None = None
        self.restart_requested = False
        self._overdue = False   # the journey deadline (services/runtime/journey.py) passed at the last look
        self._checks = {"nats": False, "redis": False, "consumer": stage is None,
                        "state": stage is None or not stage.options.stateful}
        self.http_port = 0
        self.cache_settings = load(CacheSettings, "TRADEFLOW_CACHE_")
        self.cache: Cache | None = None
        self.redis: Redis | None = None
        self.loop_lag = LoopLag(self.metrics)
        self.tasks = TaskManager(MarketClock(settings.calendar), backoff=settings.backoff)
        self.pool = ComputePool(load(PoolSettings, "TRADEFLOW_POOL_"), self.metrics)   # workers start on first use
        self.started = time.monotonic()
        self.process = psutil.Process()
        self.tracing = Tracing.from_env(self.name, version(),   # None unless an OTLP endpoint is configured
                                        consumer=self.consumer if stage is not None else None)
        # where a stateful stage rebuilds what aged out of the stream from: read (and checked) once, at start
        self.store = store_location() if stage is not None and stage.options.stateful else None

    def ready(self) -> dict[str, bool]:
        """What /readyz reports."""
        checks = dict(self._checks) | self.component.checks()
        checks["nats"] = bool(self.nc and self.nc.is_connected)
        return checks

    def _on_main_done(self, task: asyncio.Task) -> None:
        """A worker, capture or producer that ends by itself failed (a deployment error such as a
        publish NATS refuses): say so loudly and stop, so the process exits non-zero and is seen."""
        if task.cancelled() or task.exception() is None or self.stop.is_set():
            return
        self.failure = task.exception()
        log.critical("stopping: a task failed", extra={"task": task.get_name(), "error": repr(self.failure)},
                     exc_info=self.failure)
        self.stop.set()

    def _restart(self) -> None:
        """Asked to restart (tradeflow.<service>.restart): drain and exit with EXIT_RESTART."""
        self.restart_requested = True
        self.stop.set()

    async def _ping_redis(self, redis) -> None:
        """One readiness check of Redis (a task of the task manager, every second)."""
        try:
            self._checks["redis"] = bool(await redis.ping())
        except REDIS_UNAVAILABLE:
            self._checks["redis"] = False
            raise

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then drain; the exit code."""
        s = self.settings
        setup_logging(self.name, s.log_level)
        faulthandler.register(signal.SIGUSR1, all_threads=True)   # kill -USR1: every thread's stack to stderr
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGUSR2, _dump_tasks)   # kill -USR2: every asyncio task's stack
        # first: a REDIS_URL that cannot work stops the service before it serves anything
        redis = self.redis = await connect_redis(s.redis_url, load(RedisTlsSettings, "TRADEFLOW_"))
        self.nc = None
        self.micro = None
        self.worker: Worker | None = None
        routes = [web.get("/v1/health", self._health_view)]
        try:
            runner, self.http_port = await start_http(
                s.http_host, s.http_port, service=self.name, metrics=self.metrics, ready=self.ready,
                routes=routes + self.component.routes())
        except BaseException:
            await redis.aclose()
            raise
        log.info("service starting", extra={"settings": repr(s), "http_port": self.http_port})
        background: list[asyncio.Task] = [asyncio.create_task(self.loop_lag.watch(stop=self._closing),
                                                              name="loop-lag")]
        self.cache = Cache(redis, self.cache_settings, self.metrics)
        self.tasks.register("redis-ping", lambda: self._ping_redis(redis), priority=Priority.CRITICAL,
                            every=Every(1.0, 1.0), timeout=5.0, backoff=(1.0,))   # readiness follows within 1 s
        await self.tasks.start()
        opened = False
        try:   # its files and stores first: one it cannot use stops the start before anything is connected
            if not await self._until_stopped(self._open_component(redis)):
                return 0
            opened = True
            watch = PermissionWatch()
            tls = load(TlsSettings, "TRADEFLOW_").context(s.nats_url)
            self.nc = await self._until_stopped(connect_nats(s.nats_url, self.name, watch, tls,
                                                                    inbox_prefix=inbox_prefix(self.name)))
            if self.nc is None:
                return 0
            js = self.nc.jetstream(timeout=s.publish_timeout)
            jsm = self.nc.jsm()
            stage = self.stage
            wanted = [(PIPELINE_STREAM, consumer_config(self.consumer, list(stage.consumes), s)),
                      (ADVISORY_STREAM, advisory_consumer_config(self.consumer, s,
                                                                 terminated=stage.options.dead_letters)),
                      ] if stage is not None else []
            if await self._until_stopped(await_provisioned(jsm, wanted, watch=watch)) is None and self.stop.is_set():
                return 0
            self.micro = await start_micro(
                self.nc, self.name, description=(type(self.component).__doc__ or self.name).strip().splitlines()[0],
                meta={"consumer": self.consumer if stage is not None else "", "http_port": self.http_port,
                      "partition": s.partition or "", "pid": os.getpid()},
                metrics=self.metrics, health=self.health, ready=self.ready, restart=self._restart,
                extra=self.component.micro_endpoints())
            publisher = Publisher(js, timeout=s.publish_timeout, window=s.publish_window, watch=watch)
            dedup = DedupRegistry(redis, self.name, s.dedup_ttl)
            main: list[asyncio.Task] = []
            if stage is not None:
                tracking = None
                if stage.options.stateful:
                    rebuilt = await self._until_stopped(rebuild_state(stage, js, jsm, self.consumer, dedup,
                                                                      store=self.store, wait=s.rebuild_wait))
                    if rebuilt is None:   # stopped while it waited for NATS, Redis or the store
                        return 0
                    folded, tracking = rebuilt
                    self.metrics.rebuilt_events.labels(self.name).inc(folded)
                    self._checks["state"] = True
                if stage.options.stateful or stage.options.in_order:
                    await self._await_unacked(jsm)
                sub = await js.pull_subscribe_bind(durable=self.consumer, stream=PIPELINE_STREAM)
                self._checks["consumer"] = True
                self.tasks.register("consumer-lag", lambda: self._read_lag(jsm), priority=Priority.IMPORTANT,
                                    every=Every(1.0, 1.0), timeout=5.0, backoff=(1.0, 2.0, 5.0))
                self.worker = Worker(stage, sub, publisher=publisher, dedup=dedup, metrics=self.metrics,
                                     settings=s, consumer=self.consumer, tracing=self.tracing, tracking=tracking,
                                     reconnects=functools.partial(_reconnects, self.nc))
                main.append(asyncio.create_task(self.worker.run(), name="worker"))
                capture = DeadLetterCapture(self.name, js, jsm, publisher, self.metrics, s, consumer=self.consumer)
                main.append(asyncio.create_task(capture.run(), name="dead-letter-capture"))
            if self.producer is not None:
                context = SimpleNamespace(publish=self._publish_fn(publisher), js=js, jsm=jsm, nc=self.nc,
                                          tasks=self.tasks, metrics=self.metrics, stopping=self.stop)
                main.append(asyncio.create_task(self.producer(context), name="producer"))
            for task in main:
                task.add_done_callback(self._on_main_done)
            log.info("service ready", extra={"consumes": list(stage.consumes) if stage is not None else []})
            await self.stop.wait()
            log.info("stopping: draining in-flight work")
            if self.worker is not None:
                self.worker.stopping.set()
                capture.stopping.set()
            done, pending = await asyncio.wait(main, timeout=s.drain_timeout) if main else (set(), set())
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("task ended with error", extra={"task": task.get_name(), "error": repr(task.exception())})
            return EXIT_FAILED if self.failure is not None else EXIT_RESTART if self.restart_requested else 0
        finally:
            self._closing.set()
            await self.tasks.stop()
            _, still = await asyncio.wait(background, timeout=2.0) if background else (set(), set())
            for task in still:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self.micro is not None and self.nc is not None and not self.nc.is_closed:
                try:
                    await asyncio.wait_for(self.micro.stop(), timeout=2.0)
                except Exception as exc:  # noqa: BLE001 - closing anyway
                    log.warning("micro service did not stop cleanly", extra={"error": repr(exc)})
            if self.nc is not None and not self.nc.is_closed:
                try:  # acks and naks are plain publishes: flush them out before closing
                    await asyncio.wait_for(self.nc.flush(), timeout=s.drain_timeout)
                except Exception as exc:  # noqa: BLE001 - closing anyway
                    log.warning("nats flush incomplete", extra={"error": repr(exc)})
                try:
                    await self.nc.close()
                except Exception as exc:  # noqa: BLE001 - nats-py writes to a transport a lost connection closed
                    log.warning("nats connection closed uncleanly", extra={"error": repr(exc)})
            if opened:
                await self.component.close()
            await redis.aclose()
            await self.pool.close()
            if self.tracing is not None:
                await asyncio.to_thread(self.tracing.shutdown)   # export what is queued
            await runner.cleanup()
            log.info("service stopped")

    async def _open_component(self, redis) -> bool:
        """The component's open(); True once it returned (a stop meanwhile cancels it)."""
        await self.component.open(self._context(redis))
        return True

    async def _await_unacked(self, jsm) -> None:
        """Let what a previous run held unacked (it was killed) come back before anything newer.

        JetStream redelivers those messages only after ack_wait, while newer ones would be
        delivered at once: a stateful agent would then see a symbol's bars out of order.
        Redeliveries go out first once due, so waiting out ack_wait keeps the stream's order.
        """
        info = await jsm.consumer_info(PIPELINE_STREAM, self.consumer)
        if not info.num_ack_pending:
            return
        wait = self.settings.ack_wait + 0.5
        log.warning("the last run left messages unacked: waiting for them to come back first",
                    extra={"unacked": info.num_ack_pending, "seconds": wait})
        await pause(wait, self.stop)

    async def _read_lag(self, jsm) -> None:
        """Update tradeflow_consumer_pending (how far behind the stream this service is) and move the
        tracking record's floor up to the ack floor; a task of the task manager: while NATS is away the
        gauges keep their last values and the task's health says why."""
        info = await jsm.consumer_info(PIPELINE_STREAM, self.consumer)
        self.metrics.consumer_pending.labels(self.name).set(info.num_pending or 0)
        self.metrics.consumer_ack_pending.labels(self.name).set(info.num_ack_pending or 0)
        waiting = await oldest_waiting(jsm, PIPELINE_STREAM, info)
        late = overdue(waiting, self.settings.journey_timeout)
        self.metrics.oldest_waiting.labels(self.name).set(waiting.age() if waiting else 0.0)
        self.metrics.journey_overdue.labels(self.name).set(1 if late else 0)
        if late != self._overdue:   # said once when it starts, once when it clears
            self._overdue = late
            if late and waiting is not None:
                log.warning("journey deadline passed: an event has waited too long for this service", extra={
                    "seq": waiting.seq, "subject": waiting.subject, "waited_s": round(waiting.age(), 1),
                    "journey_timeout": self.settings.journey_timeout})
            else:
                log.info("journey deadline met again: nothing waits too long")
        if self.worker is not None and self.worker.tracking is not None:   # all below it was applied and acked
            self.worker.tracking.advance(info.ack_floor.stream_seq)

    def health(self) -> dict:
        """GET /v1/health: readiness checks, tasks, cache, event-loop lag, process, uptime, market phase."""
        with self.process.oneshot():
            cpu, memory = self.process.cpu_times(), self.process.memory_info()
            process = {"pid": self.process.pid, "cpu_seconds": round(cpu.user + cpu.system, 3),
                       "cpu_percent": self.process.cpu_percent(), "rss_mb": round(memory.rss / 2**20, 1),
                       "threads": self.process.num_threads()}
        clock = self.tasks.clock
        market: dict = {"calendar": clock.name, "used": clock.loaded}
        if clock.loaded:
            at = clock.at()
            market |= {"phase": at.phase, "reason": at.reason,
                       "next_change": at.next_change.isoformat() if at.next_change else None}
        return {
            "service": self.name, "consumer": self.consumer if self.stage is not None else None,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "checks": self.ready(),
            "time": datetime.now(timezone.utc).isoformat(),
            "process": process,
            "event_loop_lag": self.loop_lag.snapshot(),
            "tasks": [msgspec.to_builtins(h) for h in self.tasks.health()],
            "cache": self.cache.stats() if self.cache else None,
            "redis": redis_location(self.redis, self.settings.redis_url) if self.redis is not None else None,
            "pool": self.pool.stats(),
            "market": market,
        }

    async def _health_view(self, _: web.Request) -> web.Response:
        return web.json_response(self.health(), dumps=lambda v: msgspec.json.encode(v).decode())

    def _context(self, redis) -> AgentContext:
        data_dir = Path(self.settings.data_dir) / self.consumer
        data_dir.mkdir(parents=True, exist_ok=True)
        return AgentContext(cache=self.cache, data_dir=data_dir, metrics=self.metrics, pool=self.pool)

    async def _until_stopped(self, coro):
        """Await `coro` unless a stop signal comes first (then None)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return None

    def _publish_fn(self, publisher: Publisher):
        service = self.name
        metrics = self.metrics
        tracing = self.tracing

        async def publish(events: Sequence[tuple[str, Event]]) -> None:
            started_ns = time.time_ns()
            batch = [envelope_out(event, service=service, event_id=event_id,
                                  trace_id=ce.trace_id_for(event_id), causation_id=None)
                     for event_id, event in events]
            await publisher.publish(batch)
            for out in batch:
                metrics.messages_out.labels(service, stage_of(out.subject)).inc()
            if tracing is not None:   # a journey starts here: a root span per event
                end_ns = time.time_ns()
                for (event_id, _), out in zip(events, batch):
                    tracing.hop("publish", out.subject, message_id=event_id, trace_id=ce.trace_id_for(event_id),
                                span_id=ce.span_id(event_id), parent_span_id=None, start_ns=started_ns, end_ns=end_ns,
                                attributes={"tradeflow.service": service})

        return publish


def _dump_tasks() -> None:
    """Print every asyncio task and where it waits (to stderr, the service's log): for a stuck service."""
    for task in asyncio.all_tasks():
        print(f"--- task {task.get_name()}", file=sys.stderr)
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


def _reconnects(nc: NATS) -> int:
    """How often the connection was made again (its stats)."""
    return int(nc.stats["reconnects"])


def run(component: Component, settings: RuntimeSettings) -> int:
    """Run a service to completion under uvloop when available; returns the exit code."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return asyncio.run(Service(component, settings).run())
    return uvloop.run(Service(component, settings).run())
