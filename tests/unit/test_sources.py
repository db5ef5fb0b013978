"""Bar sources: OHLCV CSV files (bundled and hand-written), the seeded synthetic walk, load_bars and bar_id."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from contracts.errors import ConfigError
from services.data.datasets import builtin_path
from services.data.service import DataSettings, bar_id, load_bars
from services.data.sources import CsvError, read_csv, synthetic

HEADER = "Date,open,high,low,close,volume\n"


def write(tmp_path, text: str, name: str = "bars.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_goog_file_reads_every_bar():
    bars = read_csv(builtin_path("GOOG"), "GOOG")
    assert len(bars) == 2148
    first = bars[0]
    assert first.ts == datetime(2004, 8, 19, tzinfo=timezone.utc)
    assert (first.open, first.high, first.low, first.close, first.volume) == (100.0, 104.06, 95.96, 100.34, 22351900.0)
    assert bars[-1].ts == datetime(2013, 3, 1, tzinfo=timezone.utc)
    assert all(b.symbol == "GOOG" for b in bars)


def test_lowercase_headers_with_a_date_column(tmp_path):
    path = write(tmp_path, "date,open,high,low,close\n2024-01-02,10,12,9,11\n2024-01-03T00:00:00Z,11,11.5,10,10.5\n")
    bars = read_csv(path, "ACME")
    assert [(b.ts.day, b.close) for b in bars] == [(2, 11.0), (3, 10.5)]
    assert bars[0].ts.tzinfo is not None and bars[0].volume == 0.0  # naive dates are UTC; no volume column = 0


def test_mixed_case_headers_in_any_order_and_epoch_times(tmp_path):
    # 1704153600 = 2024-01-02T00:00:00Z; the second row is the next day in epoch milliseconds
    path = write(tmp_path, "Close,Volume,Timestamp,LOW,High,Open\n11,500,1704153600,9,12,10\n"
                           "10.5,,1704240000000,10,11.5,11\n")
    bars = read_csv(path, "ACME")
    assert [b.ts for b in bars] == [datetime(2024, 1, 2, tzinfo=timezone.utc),
                                    datetime(2024, 1, 3, tzinfo=timezone.utc)]
    assert (bars[0].open, bars[0].high, bars[0].low, bars[0].close, bars[0].volume) == (10.0, 12.0, 9.0, 11.0, 500.0)
    assert bars[1].volume == 0.0


def test_blank_lines_are_skipped(tmp_path):
    path = write(tmp_path, HEADER + "2024-01-02,10,12,9,11,1\n\n,,,,,\n2024-01-03,11,12,10,11,1\n")
    assert len(read_csv(path, "ACME")) == 2


@pytest.mark.parametrize(("rows", "line", "why"), [
    pytest.param("2024-01-02,10,12,9,11,1\n2024-01-03,ten,12,9,11,1\n", 3, "not a valid bar", id="text-price"),
    pytest.param("2024-01-02,10,12,9,11,1\nnot-a-date,10,12,9,11,1\n", 3, "not a valid bar", id="bad-date"),
    pytest.param("2024-01-02,10,12,9\n", 2, "not a valid bar", id="short-row"),
    pytest.param("2024-01-02,10,9,12,11,1\n", 2, "high 9.0 is below low 12.0", id="high-below-low"),
    pytest.param("2024-01-02,13,12,9,11,1\n", 2, "open 13.0 is outside", id="open-above-high"),
    pytest.param("2024-01-02,-1,12,9,11,1\n", 2, "not a valid bar", id="negative-price"),
    pytest.param("2024-01-02,10,nan,9,11,1\n", 2, "not a valid bar", id="nan-price"),
    pytest.param("2024-01-03,10,12,9,11,1\n2024-01-02,10,12,9,11,1\n", 3, "is not after", id="out-of-order"),
    pytest.param("2024-01-02,10,12,9,11,1\n2024-01-02,10,12,9,11,1\n", 3, "is not after", id="duplicate-time"),
])
def test_bad_row_stops_the_read_naming_file_and_line(tmp_path, rows, line, why):
    path = write(tmp_path, HEADER + rows)
    with pytest.raises(CsvError, match=f"bars.csv:{line}: .*{why}"):
        read_csv(path, "ACME")


@pytest.mark.parametrize(("text", "why"), [
    pytest.param("", "empty file", id="empty"),
    pytest.param("Date,open,high,low\n2024-01-02,10,12,9\n", "needs a time column", id="no-close-column"),
    pytest.param("when,open,high,low,close\n2024-01-02,10,12,9,11\n", "needs a time column", id="no-time-column"),
])
def test_unusable_file_is_a_csv_error_naming_it(tmp_path, text, why):
    path = write(tmp_path, text)
    with pytest.raises(CsvError, match=f"bars.csv: {why}"):
        read_csv(path, "ACME")


def test_missing_file_is_a_csv_error_naming_it(tmp_path):
    with pytest.raises(CsvError, match="nowhere.csv: cannot open"):
        read_csv(tmp_path / "nowhere.csv", "ACME")


def test_load_bars_fails_on_a_bad_csv_as_a_config_error(tmp_path):
    # the data service must fail at start-up, like any other bad setting, naming the line
    path = write(tmp_path, HEADER + "2024-01-02,10,9,12,11,1\n")
    with pytest.raises(ConfigError, match="bars.csv:2: "):
        load_bars(DataSettings(source="csv", files=[f"ACME={path}"]))


def test_synthetic_is_deterministic_per_seed():
    assert synthetic(["AAPL", "MSFT"], 50, seed=7) == synthetic(["AAPL", "MSFT"], 50, seed=7)
    assert synthetic(["AAPL", "MSFT"], 50, seed=7) != synthetic(["AAPL", "MSFT"], 50, seed=8)


def test_synthetic_symbol_walk_does_not_depend_on_the_other_symbols():
    alone = synthetic(["AAPL"], 20, seed=7)
    assert [b for b in synthetic(["AAPL", "MSFT"], 20, seed=7) if b.symbol == "AAPL"] == alone


def test_synthetic_bars_are_valid_and_interleaved_in_time_order():
    bars = synthetic(["MSFT", "AAPL"], 30, seed=3)
    assert len(bars) == 60
    assert [b.symbol for b in bars[:4]] == ["AAPL", "MSFT", "AAPL", "MSFT"]  # same minute: by symbol
    assert all(a.ts <= b.ts for a, b in zip(bars, bars[1:]))
    assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high and b.low > 0 for b in bars)
    aapl = [b for b in bars if b.symbol == "AAPL"]
    assert all(prev.close == nxt.open for prev, nxt in zip(aapl, aapl[1:]))  # a continuous walk


def test_load_bars_reads_bundled_and_named_csv_files(tmp_path):
    path = write(tmp_path, HEADER + "2004-08-19,1,2,0.5,1.5,10\n")
    bars = load_bars(DataSettings(source="csv", files=["GOOG", f"acme={path}"]))
    assert len(bars) == 2149
    assert bars[0].symbol == "ACME" and bars[1].symbol == "GOOG"  # same day: merged by symbol


def test_load_bars_synthetic_and_none():
    assert len(load_bars(DataSettings(source="synthetic", symbols=["X"], bars=5))) == 5
    assert load_bars(DataSettings(source="none")) == []


@pytest.mark.parametrize(("cfg", "why"), [
    pytest.param(DataSettings(source="kafka"), "TRADEFLOW_DATA_SOURCE: unknown source 'kafka'", id="unknown-source"),
    pytest.param(DataSettings(source="csv"), "TRADEFLOW_DATA_FILES", id="csv-without-files"),
    pytest.param(DataSettings(source="synthetic", symbols=["ok", "A B"]), "TRADEFLOW_DATA_SYMBOLS: 'ok'",
                 id="bad-synthetic-symbol"),
    pytest.param(DataSettings(source="csv", files=["NASDAQ"]), "unknown data set 'NASDAQ'", id="unknown-data-set"),
    pytest.param(DataSettings(source="csv", files=["X=no/such.csv"]), "such.csv: cannot open", id="missing-file"),
    pytest.param(DataSettings(source="csv", files=["a b=GOOG"]), "'A B' is not a valid symbol", id="bad-csv-symbol"),
])
def test_load_bars_refuses_a_bad_configuration(cfg, why):
    with pytest.raises(ConfigError, match=why):
        load_bars(cfg)


def test_bar_id_is_stable_per_symbol_and_time():
    a, b = synthetic(["AAPL"], 2, seed=1)
    assert bar_id(a) == bar_id(synthetic(["AAPL"], 1, seed=99)[0])  # same symbol and minute, other prices
    assert bar_id(a) != bar_id(b)
    assert bar_id(a) != bar_id(synthetic(["MSFT"], 1, seed=1)[0])
