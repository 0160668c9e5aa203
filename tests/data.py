"""Real historical bars for tests (``../shared/data/market`` beside the repository).

Only tests and benchmarks read this folder; the product never does.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
MARKET_DIR = (REPO / ".." / "shared" / "data" / "market").resolve()
SAMPLE_CSV = MARKET_DIR / "us_equities_1min_sample_2018-02-16_2018-02-23.csv"
FULL_CSV_GZ = MARKET_DIR / "us_equities_1min_2018-02-16_2018-04-20.csv.gz"


def require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"test data missing: {path} (expected ../shared beside the repo)")
    return path


def minute_bars(days: int, symbols: int, out: Path, *, regular_only: bool = True) -> Path:
    """Write the first ``days`` trading days of the first ``symbols`` symbols
    (alphabetically) of the real one-minute bars to ``out`` (CSV) and return it."""
    frame = pd.read_csv(require(FULL_CSV_GZ))
    chosen = sorted(frame["symbol"].unique())[:symbols]
    frame = frame[frame["symbol"].isin(chosen)]
    day = frame["timestamp"].str.slice(0, 10)
    keep_days = sorted(day.unique())[:days]
    frame = frame[day.isin(keep_days)]
    if regular_only:
        frame = frame[frame["timestamp"].str.slice(11, 16) >= "09:30"]
    frame.to_csv(out, index=False)
    return out
