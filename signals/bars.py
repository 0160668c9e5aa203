"""Dense minute-bar history for training, tests and benchmarks.

``DenseBars`` holds a bar history as ``[T, N]`` arrays (timestamps x symbols) with NaN
where a symbol has no bar at a timestamp, the same layout ``BarBatch`` uses for one
timestamp. The daemon itself never reads history files; this module serves the offline
paths (``tradingd train``, parity tests, the benchmark) and can replay a history as the
``BarBatch`` events the live path sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd

from kernel.events import BarBatch
from kernel.model import FloatArray

NEW_YORK = ZoneInfo("America/New_York")
CSV_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
FIELDS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True, slots=True)
class DenseBars:
    """A bar history: ``ts_ns`` (bar start, UTC epoch ns, ascending) and one ``[T, N]``
    array per OHLCV field aligned with ``symbols``; NaN marks a missing bar."""

    ts_ns: npt.NDArray[np.int64]
    symbols: tuple[str, ...]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray

    def __len__(self) -> int:
        return len(self.ts_ns)

    def timestamp(self, t: int) -> datetime:
        """Bar start of row ``t`` as an aware UTC datetime."""
        return datetime.fromtimestamp(int(self.ts_ns[t]) // 1_000_000_000, UTC)

    def ny_dates(self) -> npt.NDArray[np.object_]:
        """New York trading date of every row (``datetime.date`` objects)."""
        idx = pd.DatetimeIndex(self.ts_ns.astype("datetime64[ns]"), tz="UTC")
        return np.asarray(idx.tz_convert(NEW_YORK).date)

    def slice_rows(self, start: int, stop: int) -> DenseBars:
        """Rows ``start:stop`` (views, no copy)."""
        return DenseBars(
            self.ts_ns[start:stop], self.symbols, self.open[start:stop],
            self.high[start:stop], self.low[start:stop], self.close[start:stop],
            self.volume[start:stop],
        )

    def select(self, symbols: Sequence[str]) -> DenseBars:
        """The same history restricted to ``symbols`` (in that order)."""
        ix = [self.symbols.index(s) for s in symbols]
        return DenseBars(
            self.ts_ns, tuple(symbols), self.open[:, ix], self.high[:, ix],
            self.low[:, ix], self.close[:, ix], self.volume[:, ix],
        )

    def until_day(self, n_days: int) -> DenseBars:
        """The first ``n_days`` New York trading dates."""
        days = self.ny_dates()
        uniq = sorted(set(days))
        if n_days >= len(uniq):
            return self
        stop = int(np.searchsorted(days, uniq[n_days], side="left"))
        return self.slice_rows(0, stop)

    def batches(self) -> Iterator[BarBatch]:
        """Replay as ``BarBatch`` events: one per timestamp, present symbols only."""
        for t in range(len(self)):
            ok = np.isfinite(self.close[t])
            ix = np.flatnonzero(ok)
            yield BarBatch(
                ts=self.timestamp(t),
                symbols=tuple(self.symbols[i] for i in ix),
                open=self.open[t, ix], high=self.high[t, ix], low=self.low[t, ix],
                close=self.close[t, ix], volume=self.volume[t, ix],
            )


def read_bars_csv(
    path: Path,
    *,
    symbols: Sequence[str] | None = None,
    first_symbols: int | None = None,
    days: int | None = None,
) -> DenseBars:
    """Read a ``timestamp,symbol,open,high,low,close,volume`` CSV (optionally gzipped).

    Args:
        path: the CSV; timestamps are ISO 8601 with a UTC offset, bar start.
        symbols: keep only these symbols (in this order).
        first_symbols: keep the first N symbols alphabetically (after ``symbols``).
        days: keep the first N New York trading dates.
    """
    df = pd.read_csv(
        path, usecols=list(CSV_COLUMNS),
        dtype={"symbol": "category", "open": "float64", "high": "float64", "low": "float64",
               "close": "float64", "volume": "float64"},
    )
    missing = sorted(set(CSV_COLUMNS) - set(df.columns))
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    # Few distinct timestamps (one per minute): parse each distinct string once.
    codes, uniq = pd.factorize(df["timestamp"], sort=False)
    uniq_ns = pd.to_datetime(pd.Index(uniq), format="ISO8601", utc=True).as_unit("ns").asi8
    ts_ns = uniq_ns[codes]
    names = sorted(str(s) for s in df["symbol"].cat.categories)
    if symbols is not None:
        unknown = sorted(set(symbols) - set(names))
        if unknown:
            raise ValueError(f"{path}: symbols not in file: {unknown}")
        names = list(symbols)
    if first_symbols is not None:
        names = names[:first_symbols]
    keep = df["symbol"].isin(names).to_numpy()
    bars = _densify(ts_ns[keep], df[keep], names)
    return bars.until_day(days) if days is not None else bars


def _densify(ts_ns: npt.NDArray[np.int64], df: pd.DataFrame, names: Sequence[str]) -> DenseBars:
    times, t_ix = np.unique(ts_ns, return_inverse=True)
    sym = df["symbol"].to_numpy()
    s_pos = {s: i for i, s in enumerate(names)}
    s_ix = np.fromiter((s_pos[s] for s in sym), dtype=np.intp, count=len(sym))
    shape = (len(times), len(names))
    arrays: list[FloatArray] = []
    for f in FIELDS:
        a = np.full(shape, np.nan)
        a[t_ix, s_ix] = df[f].to_numpy()
        arrays.append(a)
    return DenseBars(times.astype(np.int64), tuple(names), *arrays)


def trading_dates(bars: DenseBars) -> list[date]:
    """Distinct New York trading dates of a history, ascending."""
    return sorted(set(bars.ny_dates()))
