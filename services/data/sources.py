"""Bar sources: a seeded synthetic random walk and OHLCV CSV files of real history.

Both yield `BarReceived` events in time order. A CSV row that is not a valid
bar stops the read with the file, line and reason: a silent skip would be a
silent wrong number downstream.
"""

from __future__ import annotations

import csv
import heapq
import math
import random
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec

from contracts.errors import ConfigError
from contracts.events import BarReceived

_TIME_COLUMNS = ("", "date", "datetime", "time", "timestamp", "ts")


class CsvError(ConfigError):
    """Raised when an OHLCV file cannot be read as bars; names the file and line."""


def _parse_time(text: str) -> datetime:
    text = text.strip()
    if text.isdigit():  # epoch seconds (or milliseconds)
        value = int(text)
        return datetime.fromtimestamp(value / 1000 if value > 10**11 else value, tz=timezone.utc)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def read_csv(path: str | Path, symbol: str) -> list[BarReceived]:
    """Bars of one OHLCV file: a timestamp column (or unnamed index), then Open/High/Low/Close[/Volume] in any case."""
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise CsvError(f"{path}: cannot open: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise CsvError(f"{path}: empty file") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CsvError(f"{path}: not a CSV file: {exc}") from None
        try:
            t_col = next(i for i, h in enumerate(header) if h in _TIME_COLUMNS)
            cols = {k: header.index(k) for k in ("open", "high", "low", "close")}
        except (StopIteration, ValueError):
            raise CsvError(f"{path}: needs a time column and open/high/low/close columns, got {header}") from None
        v_col = header.index("volume") if "volume" in header else None
        bars: list[BarReceived] = []
        last: datetime | None = None
        try:
            for line, row in enumerate(reader, start=2):
                if not row or all(not cell.strip() for cell in row):
                    continue
                try:
                    ts = _parse_time(row[t_col])
                    values = {k: float(row[i]) for k, i in cols.items()}
                    volume = float(row[v_col]) if v_col is not None and row[v_col].strip() else 0.0
                    bar = msgspec.convert({"symbol": symbol, "ts": ts, "volume": volume, **values}, BarReceived)
                except (ValueError, IndexError, msgspec.ValidationError) as exc:
                    raise CsvError(f"{path}:{line}: not a valid bar: {exc}") from None
                if last is not None and ts <= last:
                    raise CsvError(f"{path}:{line}: time {ts.isoformat()} is not after {last.isoformat()}")
                last = ts
                bars.append(bar)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CsvError(f"{path}: not a CSV file: {exc}") from None
    return bars


def synthetic(symbols: Iterable[str], bars: int, seed: int, start: datetime | None = None,
              step: timedelta = timedelta(minutes=1)) -> list[BarReceived]:
    """A deterministic geometric random walk per symbol (same seed, same bars)."""
    start = start or datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
    out: list[BarReceived] = []
    for symbol in symbols:
        rng = random.Random(f"{seed}:{symbol}")
        price = 50 + rng.random() * 150
        for i in range(bars):
            open_ = price
            close = max(0.01, open_ * math.exp(rng.gauss(0, 0.01)))
            high = max(open_, close) * (1 + abs(rng.gauss(0, 0.002)))
            low = min(open_, close) * (1 - abs(rng.gauss(0, 0.002)))
            out.append(BarReceived(symbol=symbol, ts=start + i * step, open=round(open_, 4), high=round(high, 4),
                                   low=round(low, 4), close=round(close, 4), volume=float(rng.randint(100, 10_000))))
            price = close
    return merge([out])


def merge(series: Iterable[Iterable[BarReceived]]) -> list[BarReceived]:
    """Bars of many symbols interleaved in time order (ties by symbol)."""
    return list(heapq.merge(*(sorted(s, key=lambda b: (b.ts, b.symbol)) for s in series),
                            key=lambda b: (b.ts, b.symbol)))
