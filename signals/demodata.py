"""The project's own demo bars: seeded synthetic one-minute bars for about 50 symbols.

A one-factor model (a market return shared by all symbols, plus each symbol's own noise
with a little short-term momentum), a U-shaped intraday volume profile, regular sessions
09:30-15:59 New York time on real XNYS trading days. Deterministic for a seed, so the demo
day, the demo model and the tests are reproducible. Usage::

    python -m signals.demodata --out data/demo/bars.csv --days 10 --symbols 50
"""

from __future__ import annotations

import argparse
from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from kernel.time import NEW_YORK

# Consecutive XNYS sessions with no holiday or half day in between.
FIRST_DAY = date(2024, 3, 4)
BARS_PER_DAY = 390


def trading_days(n: int, first: date = FIRST_DAY) -> list[date]:
    days: list[date] = []
    d = first
    while len(days) < n:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


def symbols(n: int) -> list[str]:
    return [f"DEMO{i:02d}" for i in range(n)]


def generate(days: int = 1, n_symbols: int = 50, seed: int = 7, first: date = FIRST_DAY
             ) -> pd.DataFrame:
    """Bars as a DataFrame with the replay CSV's columns, sorted by timestamp, symbol."""
    rng = np.random.default_rng(seed)
    syms = symbols(n_symbols)
    price = rng.uniform(20, 400, n_symbols)
    beta = rng.uniform(0.6, 1.4, n_symbols)
    vol = rng.uniform(0.0006, 0.0016, n_symbols)
    base_volume = rng.uniform(2_000, 40_000, n_symbols)
    minutes = np.arange(BARS_PER_DAY)
    u_shape = 1.0 + 2.5 * ((minutes - BARS_PER_DAY / 2) / (BARS_PER_DAY / 2)) ** 2
    frames = []
    last_idio = np.zeros(n_symbols)
    for day in trading_days(days, first):
        open_ts = datetime.combine(day, time(9, 30), NEW_YORK)
        stamps = [open_ts + timedelta(minutes=int(m)) for m in minutes]
        mkt = rng.normal(0, 0.0005, BARS_PER_DAY)
        rows_close = np.empty((BARS_PER_DAY, n_symbols))
        rows_open = np.empty_like(rows_close)
        for m in range(BARS_PER_DAY):
            idio = 0.08 * last_idio + rng.normal(0, 1, n_symbols) * vol
            last_idio = idio
            ret = beta * mkt[m] + idio
            rows_open[m] = price * np.exp(rng.normal(0, 0.0002, n_symbols))
            price = rows_open[m] * np.exp(ret)
            rows_close[m] = price
        wick = np.abs(rng.normal(0, 1, rows_close.shape)) * vol * rows_close
        high = np.maximum(rows_open, rows_close) + wick
        low = np.minimum(rows_open, rows_close) - wick * rng.uniform(0.2, 1.0, rows_close.shape)
        volume = np.maximum(1, rng.poisson(u_shape[:, None] * base_volume))
        frames.append(pd.DataFrame({
            "timestamp": np.repeat([s.isoformat() for s in stamps], n_symbols),
            "symbol": np.tile(syms, BARS_PER_DAY),
            "open": rows_open.ravel().round(2),
            "high": high.ravel().round(2),
            "low": low.ravel().round(2),
            "close": rows_close.ravel().round(2),
            "volume": volume.ravel(),
        }))
    df = pd.concat(frames, ignore_index=True)
    # Rounding can push open/close outside the wick; keep every bar consistent.
    df["high"] = df[["open", "high", "close"]].max(axis=1)
    df["low"] = df[["open", "low", "close"]].min(axis=1)
    return df


def write(path: Path, days: int = 1, *, n_symbols: int = 50, seed: int = 7,
          first: date = FIRST_DAY, last_day_to: Path | None = None) -> Path:
    """Write ``days`` days to ``path``; with ``last_day_to``, the last of them goes there
    instead (a model trained on ``path`` then trades the day that follows it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = generate(days, n_symbols, seed, first)
    if last_day_to is not None:
        last = frame["timestamp"].str.slice(0, 10).max()
        is_last = frame["timestamp"].str.startswith(last)
        frame[is_last].to_csv(last_day_to, index=False)
        frame = frame[~is_last]
    frame.to_csv(path, index=False)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m signals.demodata", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--symbols", type=int, default=50)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--first-day", type=date.fromisoformat, default=FIRST_DAY)
    p.add_argument("--last-day-to", type=Path, help="write the last day here instead")
    a = p.parse_args(argv)
    write(a.out, a.days, n_symbols=a.symbols, seed=a.seed, first=a.first_day,
          last_day_to=a.last_day_to)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
