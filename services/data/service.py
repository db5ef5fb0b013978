"""Data service wiring: bars from the configured source to data_ready.<SYM>.

Two modes. `batch` (the default for synthetic and csv) publishes every bar the source holds,
in chunks, as fast as allowed. `poll` (the only mode for http) asks a provider for each symbol's
new bars on the task manager, at the interval of the symbol's priority tier and the market's
phase (services/data/polling.py); synthetic and csv sources then play as a live feed.

On a restart it resumes after the last bar each symbol has in the stream, and
bar ids are derived from (symbol, time), so nothing is published twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from nats.js.errors import NotFoundError

from contracts.codec import decode_body
from contracts.envelope import derive_id
from contracts.errors import ConfigError, Transient
from contracts.events import BarReceived
from contracts.subjects import DATA_READY, PIPELINE_STREAM, SYMBOL_RE
from aiohttp import web
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, wait_exponential

from services.data import datasets, sources
from services.data.polling import TIERS, Poller, parse_every, parse_priorities
from services.data.providers import HttpProvider, Provider, SimulatedFeed, check_url
from services.runtime.agent import Producer, ProducerContext
from services.runtime.pause import pause
from services.runtime.settings import Redacted, load

log = logging.getLogger(__name__)


Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class DataSettings(Redacted, msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_DATA_*: where bars come from and how fast they go out."""

    SECRET_FIELDS = ("token",)

    source: str = "none"           # none | synthetic | csv | http
    mode: str | None = None        # batch | poll; default: batch, poll for http
    files: list[str] = []          # csv: SYMBOL=path or a bundled name (GOOG, EURUSD, BTCUSD)
    symbols: list[str] = msgspec.field(default_factory=lambda: ["AAPL", "MSFT"])
    bars: Annotated[int, msgspec.Meta(ge=0)] = 500
    seed: int = 7
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0   # batch: bars per second; 0 = as fast as possible
    chunk: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # poll mode
    url: str = ""                  # http: a URL template with {symbol} and {after}
    token: str = ""                # http: sent as a bearer token
    priorities: list[str] = []     # SYMBOL=critical|important|nice; the rest are important
    poll_critical: list[str] = msgspec.field(default_factory=lambda: ["1", "30"])
    poll_important: list[str] = msgspec.field(default_factory=lambda: ["5", "300"])
    poll_nice: list[str] = msgspec.field(default_factory=lambda: ["30", "off"])
    poll_timeout: Seconds = 10.0   # one provider call
    poll_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    per_poll: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1   # synthetic/csv feed: bars per symbol per poll
    latency: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0     # synthetic/csv feed: seconds per answer

    @property
    def polled(self) -> bool:
        mode = self.mode or ("poll" if self.source == "http" else "batch")
        if mode not in ("batch", "poll"):
            raise ConfigError(f"TRADEFLOW_DATA_MODE: unknown mode {mode!r} (batch, poll)")
        if mode == "batch" and self.source == "http":
            raise ConfigError("TRADEFLOW_DATA_MODE: an http source is polled (TRADEFLOW_DATA_MODE=poll)")
        return mode == "poll"


def load_bars(cfg: DataSettings) -> list[BarReceived]:
    """Every bar the configured sources hold, in time order; ConfigError if a source is invalid."""
    if cfg.source in ("none", "http"):
        return []
    if cfg.source == "synthetic":
        check_symbols(cfg.symbols)
        return sources.synthetic(cfg.symbols, cfg.bars, cfg.seed)
    if cfg.source == "csv":
        if not cfg.files:
            raise ConfigError("TRADEFLOW_DATA_FILES: csv source needs SYMBOL=path entries or bundled names")
        series = []
        for spec in cfg.files:
            symbol, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
            if path.upper() in datasets.BUILTIN:
                resolved = datasets.builtin_path(path)
            elif "/" not in path and not path.lower().endswith(".csv") and not Path(path).exists():
                raise ConfigError(f"unknown data set {path!r}: use {', '.join(datasets.BUILTIN)} or SYMBOL=path.csv")
            else:
                resolved = Path(path)
            symbol = (symbol or (path if path.upper() in datasets.BUILTIN else resolved.stem)).upper()
            if not SYMBOL_RE.fullmatch(symbol):
                raise ConfigError(f"TRADEFLOW_DATA_FILES: {symbol!r} is not a valid symbol")
            series.append(sources.read_csv(resolved, symbol))
        return sources.merge(series)
    raise ConfigError(f"TRADEFLOW_DATA_SOURCE: unknown source {cfg.source!r} (none, synthetic, csv, http)")


def check_symbols(symbols: Sequence[str]) -> None:
    for symbol in symbols:
        if not SYMBOL_RE.fullmatch(symbol):
            raise ConfigError(f"TRADEFLOW_DATA_SYMBOLS: {symbol[:40]!r} is not a valid symbol")


def bar_id(bar: BarReceived) -> str:
    """A bar's id: the same bar always gets the same id, so a re-publish is dropped by the stream."""
    return derive_id("data", f"{bar.symbol}@{bar.ts.isoformat()}", 0)


class DataAgent(Producer):
    """The data stage: it consumes nothing, and publishes the bars."""

    name = "data"

    def __init__(self, settings: DataSettings) -> None:
        self.settings = settings
        self.bars = load_bars(settings)  # fail at start-up, not mid-stream
        self.published = 0
        self.done = asyncio.Event()
        self.poller: Poller | None = None
        self.polled = settings.polled
        if self.polled:   # every poll setting is checked now, not at the first poll
            self.symbols = sorted({b.symbol for b in self.bars}) if settings.source != "http" else \
                sorted({s.upper() for s in settings.symbols})
            if settings.source == "http":
                check_symbols(self.symbols)
                check_url(settings.url)
            if not self.symbols:
                raise ConfigError("TRADEFLOW_DATA_MODE=poll: no symbols to poll (TRADEFLOW_DATA_SOURCE, _SYMBOLS)")
            self.tiers = parse_priorities(settings.priorities, self.symbols)
            self.schedules = {tier: parse_every(f"TRADEFLOW_DATA_POLL_{tier.upper()}",
                                                getattr(settings, f"poll_{tier}")) for tier in TIERS}

    async def _resume_points(self, jsm, symbols: Sequence[str] | None = None) -> dict[str, Any]:
        """The time of the last bar each symbol has in the stream."""
        points = {}
        for symbol in symbols if symbols is not None else {b.symbol for b in self.bars}:
            try:
                raw = await jsm.get_last_msg(PIPELINE_STREAM, f"{DATA_READY}.{symbol}")
            except NotFoundError:
                continue
            try:
                points[symbol] = decode_body(DATA_READY, raw.data).ts
            except Exception:  # noqa: BLE001 - an injected bad message: no resume point from it
                continue
        return points

    def routes(self) -> list[web.RouteDef]:
        """GET /v1/progress: how many bars are published of how many."""

        async def progress(_: web.Request) -> web.Response:
            if self.poller is None:
                return web.json_response({"mode": "poll" if self.polled else "batch", "bars": len(self.bars),
                                          "published": self.published, "done": self.done.is_set()})
            feeds = self.poller.progress()
            return web.json_response({"mode": "poll", "source": self.settings.source, "bars": len(self.bars),
                                      "published": sum(f["published"] for f in feeds), "done": self._exhausted(),
                                      "symbols": feeds})

        return [web.get("/v1/progress", progress)]

    def describe(self) -> str:
        """Where the bars come from, in a line (what the service logs at start and `up` prints); for a source
        that gives nothing, why."""
        cfg = self.settings
        if cfg.source == "none":
            return ("none: publishing nothing (TRADEFLOW_DATA_SOURCE is none; set it to synthetic, csv or http, "
                    "or run `tradeflow up --data GOOG`)")
        symbols = sorted({b.symbol for b in self.bars}) if cfg.source != "http" else self.symbols
        where = {"synthetic": f"synthetic (seed {cfg.seed})", "csv": f"csv {', '.join(cfg.files)}",
                 "http": f"http {cfg.url}"}.get(cfg.source, cfg.source)
        listed = ", ".join(symbols[:8]) + (", ..." if len(symbols) > 8 else "")
        if self.polled:
            return f"{where}, polled: {len(symbols)} symbol(s) ({listed})"
        if not self.bars:
            return f"{where}: no bars to publish (the source holds none)"
        pace = f"{cfg.rate:g} a second" if cfg.rate else "as fast as possible"
        return f"{where}: {len(self.bars):,} bars of {len(symbols)} symbol(s) ({listed}), {pace}"

    async def produce(self, ctx: ProducerContext) -> None:
        """Batch mode: publish every bar not yet in the stream. Poll mode: poll until the service stops."""
        described = self.describe()
        if self.settings.source == "none" or (not self.polled and not self.bars):
            log.warning("data source gives nothing", extra={"source": described})
        else:
            log.info("data source", extra={"source": described})
        if self.polled:
            await self._poll(ctx)
        else:
            await self._batch(ctx)

    def provider(self) -> Provider:
        """The provider the settings name: http, or the synthetic/csv series as a live feed."""
        cfg = self.settings
        if cfg.source == "http":
            return HttpProvider(cfg.url, token=cfg.token, timeout=cfg.poll_timeout)
        series: dict[str, list[BarReceived]] = {}
        for bar in self.bars:
            series.setdefault(bar.symbol, []).append(bar)
        return SimulatedFeed(series, per_poll=cfg.per_poll, latency=cfg.latency)

    def _exhausted(self) -> bool:
        """Whether a synthetic/csv feed has published all it has (an http source never is)."""
        if self.poller is None or not isinstance(self.poller.provider, SimulatedFeed):
            return False
        return all(self.poller.provider.exhausted(f.symbol, f.last_ts) for f in self.poller.feeds.values())

    async def _poll(self, ctx: ProducerContext) -> None:
        """Register a polling task per tier on the task manager; unregister them when the service stops."""
        cfg = self.settings

        async def publish(bars: list[BarReceived]) -> None:
            await ctx.publish([(bar_id(b), b) for b in bars])

        provider = self.provider()
        poller = Poller(provider, publish, self.tiers, concurrency=cfg.poll_concurrency, timeout=cfg.poll_timeout,
                        metrics=ctx.metrics, resync=lambda symbols: self._resume_points(ctx.jsm, symbols))
        poller.resume_from(await self._resume_points(ctx.jsm, self.symbols))
        self.poller = poller
        names = poller.register(ctx.tasks, self.schedules)
        log.info("polling", extra={"provider": provider.name, "symbols": len(self.symbols), "tasks": names})
        try:
            await ctx.stopping.wait()
        finally:
            for name in names:
                await ctx.tasks.unregister(name)
            await provider.close()

    async def _batch(self, ctx: ProducerContext) -> None:
        """Publish every bar not yet in the stream, in chunks, retrying through outages."""
        publish = ctx.publish
        resume = await self._resume_points(ctx.jsm)
        todo = [b for b in self.bars if b.symbol not in resume or b.ts > resume[b.symbol]]
        log.info("publishing bars", extra={"bars": len(todo), "skipped": len(self.bars) - len(todo)})
        chunk = self.settings.chunk if self.settings.rate == 0 else 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            if self.settings.rate:
                delay = started + start / self.settings.rate - loop.time()
                if delay > 0:
                    await pause(delay, ctx.stopping)
            if ctx.stopping.is_set():   # a restart resumes after the last bar in the stream
                log.info("stopping: bars left unpublished", extra={"bars": len(todo) - start})
                return
            # same ids on every attempt: the stream's duplicate window drops what already landed
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(Transient),
                                               wait=wait_exponential(multiplier=0.2, max=5),
                                               before_sleep=before_sleep_log(log, logging.WARNING)):
                with attempt:
                    await publish([(bar_id(b), b) for b in part])
            self.published += len(part)
        log.info("all bars published", extra={"bars": self.published})
        self.done.set()


def build(environ=None) -> DataAgent:
    """The data agent from TRADEFLOW_DATA_*."""
    return DataAgent(load(DataSettings, "TRADEFLOW_DATA_", environ))
