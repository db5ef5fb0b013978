"""Polled market-data providers: each is asked for one symbol's bars after a time.

    await provider.bars("AAPL", after=datetime(...))   # bars with ts > after, oldest first

A provider is I/O: the poller (services/data/polling.py) asks it for many symbols at once.
Anything a provider hands back is checked as a bar (BarReceived's rules); one bad bar makes
the whole answer for that symbol an error, so a poll never publishes half a bad answer.

    simulated   a live feed played from a fixed series (the synthetic walk or CSV history):
                each poll releases the next `per_poll` bars after `after`, after `latency`
                seconds, as a remote provider would take.
    http        GET on a URL template with {symbol} and {after} (ISO 8601, empty on the first
                poll), answering JSON: a list of bars, or an object with a "bars" list; a bar is
                {"ts", "open", "high", "low", "close", "volume"?, "symbol"?}.
"""

from __future__ import annotations

import asyncio
import bisect
import string
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from contracts.errors import ConfigError
from contracts.events import BarReceived
from services.runtime.settings import redact

MAX_RESPONSE_BYTES = 8 * 2**20
MAX_BARS_PER_ANSWER = 100_000


class ProviderError(Exception):
    """A provider's answer for one symbol that cannot be used: unreachable, refused, malformed."""


class Provider(Protocol):
    name: str

    async def bars(self, symbol: str, after: datetime | None) -> list[BarReceived]:
        """The symbol's bars with ts > after (all it has when None), oldest first; ProviderError if none can be had."""
        ...

    async def close(self) -> None: ...


class SimulatedFeed:
    """A fixed series per symbol released `per_poll` bars at a time, each answer after `latency` seconds."""

    name = "simulated"

    def __init__(self, series: Mapping[str, Sequence[BarReceived]], per_poll: int = 1, latency: float = 0.0) -> None:
        self.series = {symbol: list(bars) for symbol, bars in series.items()}
        self._times = {symbol: [b.ts for b in bars] for symbol, bars in self.series.items()}
        self.per_poll = per_poll
        self.latency = latency
        self.in_flight = 0
        self.peak_in_flight = 0     # the most answers being waited for at once: the poller's concurrency

    async def bars(self, symbol: str, after: datetime | None) -> list[BarReceived]:
        if symbol not in self.series:
            raise ProviderError(f"{symbol}: the simulated feed has no such symbol")
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        start = 0 if after is None else bisect.bisect_right(self._times[symbol], after)
        return self.series[symbol][start:start + self.per_poll]

    def exhausted(self, symbol: str, after: datetime | None) -> bool:
        """Whether every bar of `symbol` is at or before `after`."""
        times = self._times.get(symbol, [])
        return not times or (after is not None and times[-1] <= after)

    async def close(self) -> None:
        return None


class WireBar(msgspec.Struct, forbid_unknown_fields=False):
    """A bar as an HTTP provider sends it; the symbol is the one asked for."""

    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0
    symbol: str | None = None


class BarsPage(msgspec.Struct, forbid_unknown_fields=False):
    bars: list[WireBar]


_ANSWER = msgspec.json.Decoder(list[WireBar] | BarsPage)


def parse_answer(symbol: str, body: bytes) -> list[BarReceived]:
    """An HTTP provider's answer as bars of `symbol`, oldest first; ProviderError naming what is wrong."""
    try:
        answer = _ANSWER.decode(body)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"{symbol}: not a list of bars: {str(exc)[:200]}") from None
    wire = answer.bars if isinstance(answer, BarsPage) else answer
    if len(wire) > MAX_BARS_PER_ANSWER:
        raise ProviderError(f"{symbol}: {len(wire)} bars in one answer, more than {MAX_BARS_PER_ANSWER:,}")
    out = []
    for index, bar in enumerate(wire):
        if bar.symbol is not None and bar.symbol.upper() != symbol:
            raise ProviderError(f"{symbol}: bar {index} is for {bar.symbol[:40]!r}")
        if bar.ts.tzinfo is None:
            raise ProviderError(f"{symbol}: bar {index} has a time without a timezone ({bar.ts.isoformat()})")
        try:
            out.append(BarReceived(symbol=symbol, ts=bar.ts, open=bar.open, high=bar.high, low=bar.low,
                                   close=bar.close, volume=bar.volume))
        except (ValueError, TypeError, msgspec.ValidationError) as exc:
            raise ProviderError(f"{symbol}: bar {index} at {bar.ts.isoformat()} is not a valid bar: {exc}") from None
    out.sort(key=lambda b: b.ts)
    for earlier, later in zip(out, out[1:]):
        if earlier.ts == later.ts and earlier != later:
            raise ProviderError(f"{symbol}: two different bars at {later.ts.isoformat()}")
    return out


def check_url(template: str) -> str:
    """`template` if it is an http(s) URL with {symbol} (and optionally {after}); ConfigError otherwise."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"TRADEFLOW_DATA_URL: not a URL template: {exc}") from None
    parts = urlsplit(template)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"TRADEFLOW_DATA_URL: {redact(template)[:200]!r} is not an http(s) URL")
    if "symbol" not in fields:
        raise ConfigError("TRADEFLOW_DATA_URL: the template takes {symbol} (required) and {after}; it has no {symbol}")
    if not fields <= {"symbol", "after"}:
        raise ConfigError("TRADEFLOW_DATA_URL: the template takes {symbol} (required) and {after}, "
                          f"not {sorted(fields - {'symbol', 'after'})}"[:200])
    return template


class HttpProvider:
    """Bars from an HTTP JSON endpoint, one GET per symbol and poll."""

    name = "http"

    def __init__(self, template: str, *, token: str = "", timeout: float = 10.0,
                 max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.template = check_url(template)
        self.headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def url(self, symbol: str, after: datetime | None) -> str:
        return self.template.format(symbol=quote(symbol, safe=""),
                                    after=quote(after.isoformat(), safe="") if after else "")

    async def bars(self, symbol: str, after: datetime | None) -> list[BarReceived]:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers, timeout=self.timeout)
        url = self.url(symbol, after)
        try:
            async with self._session.get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ProviderError(f"{symbol}: HTTP {response.status} from {redact(url)[:200]}")
                if (response.content_length or 0) > self.max_bytes:
                    raise ProviderError(f"{symbol}: answer of {response.content_length:,} bytes, "
                                        f"more than {self.max_bytes:,}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise ProviderError(f"{symbol}: answer longer than {self.max_bytes:,} bytes")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"{symbol}: {type(exc).__name__} from {redact(url)[:200]}: {exc}"[:400]) from None
        bars = parse_answer(symbol, bytes(body))
        return [b for b in bars if after is None or b.ts > after]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
