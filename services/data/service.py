"""Data service wiring: read the configured sources and publish bars to data_ready.<SYM>.

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
from services.data import datasets, sources
from aiohttp import web
from tenacity import AsyncRetrying, before_sleep_log, retry_if_exception_type, wait_exponential

from services.runtime.agent import ProducerContext
from services.runtime.settings import load

log = logging.getLogger(__name__)


class DataSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_DATA_*: where bars come from and how fast they go out."""

    source: str = "none"           # none | synthetic | csv
    files: list[str] = []          # csv: SYMBOL=path or a bundled name (GOOG, EURUSD, BTCUSD)
    symbols: list[str] = msgspec.field(default_factory=lambda: ["AAPL", "MSFT"])
    bars: Annotated[int, msgspec.Meta(ge=0)] = 500
    seed: int = 7
    rate: Annotated[float, msgspec.Meta(ge=0)] = 0.0   # bars per second; 0 = as fast as possible
    chunk: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500


def load_bars(cfg: DataSettings) -> list[BarReceived]:
    """Every bar the configured sources hold, in time order; ConfigError if a source is invalid."""
    if cfg.source == "none":
        return []
    if cfg.source == "synthetic":
        for symbol in cfg.symbols:
            if not SYMBOL_RE.fullmatch(symbol):
                raise ConfigError(f"TRADEFLOW_DATA_SYMBOLS: {symbol!r} is not a valid symbol")
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
    raise ConfigError(f"TRADEFLOW_DATA_SOURCE: unknown source {cfg.source!r} (none, synthetic, csv)")


def bar_id(bar: BarReceived) -> str:
    """A bar's id: the same bar always gets the same id, so a re-publish is dropped by the stream."""
    return derive_id("data", f"{bar.symbol}@{bar.ts.isoformat()}", 0)


class DataAgent:
    """The data stage consumes nothing; it produces."""

    name = "data"
    consumes: Sequence[str] = ()
    stateful = False

    def __init__(self, settings: DataSettings) -> None:
        self.settings = settings
        self.bars = load_bars(settings)  # fail at start-up, not mid-stream
        self.published = 0
        self.done = asyncio.Event()

    def handle(self, incoming, now):  # pragma: no cover - never called: consumes nothing
        return []

    def snapshot(self) -> Any:
        return None

    def restore(self, snapshot: Any) -> None:
        pass

    async def _resume_points(self, jsm) -> dict[str, Any]:
        points = {}
        for symbol in {b.symbol for b in self.bars}:
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
            return web.json_response({"bars": len(self.bars), "published": self.published,
                                      "done": self.done.is_set()})

        return [web.get("/v1/progress", progress)]

    async def produce(self, ctx: ProducerContext) -> None:
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
                    await asyncio.sleep(delay)
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
