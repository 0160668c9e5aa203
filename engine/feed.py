"""Bar replay: CSV bars (``timestamp,symbol,open,high,low,close,volume``, optionally
gzipped) grouped into one ``BarBatch`` per timestamp, at real time, N x speed, or as fast
as possible.

Loading uses pandas' C parser once; batches are then numpy slices, so iterating costs a
few microseconds per batch. Timestamps are the bar *start*; the replay clock is set to
the bar's *end* (start + interval) when it is published, since that is when such a bar
exists in a live feed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from kernel.errors import ConfigError
from kernel.events import BarBatch

COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")


class BarTape:
    """A whole replay file in memory, column-wise, sorted by (timestamp, symbol)."""

    def __init__(self, frame: pd.DataFrame, interval: timedelta = timedelta(minutes=1)) -> None:
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ConfigError("feed.replay", list(frame.columns), f"columns {COLUMNS}")
        ts_ns = (pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None)
                 .to_numpy(dtype="datetime64[ns]").astype(np.int64))
        order = np.lexsort((frame["symbol"].to_numpy(dtype=str), ts_ns))
        self.interval = interval
        self._ts = ts_ns[order]
        self._sym = frame["symbol"].to_numpy(dtype=object)[order]
        self._cols = {c: frame[c].to_numpy(dtype=np.float64)[order]
                      for c in ("open", "high", "low", "close", "volume")}
        cut = np.flatnonzero(self._ts[1:] != self._ts[:-1]) + 1
        self._starts = np.concatenate(([0], cut)).tolist()
        self._ends = [*self._starts[1:], len(self._ts)]
        self._stamps = [datetime.fromtimestamp(0, UTC) + timedelta(microseconds=int(t) // 1000)
                        for t in self._ts[self._starts]]

    @classmethod
    def from_csv(cls, path: Path) -> BarTape:
        try:
            frame = pd.read_csv(path, dtype={"symbol": str})
        except FileNotFoundError:
            raise ConfigError("feed.replay", str(path), "an existing CSV file") from None
        return cls(frame)

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def rows(self) -> int:
        return len(self._ts)

    @property
    def first_ts(self) -> datetime | None:
        """The first bar's start, or None for an empty tape."""
        return self._stamps[0] if self._stamps else None

    @property
    def symbols(self) -> list[str]:
        return sorted(set(self._sym.tolist()))

    def batches(self) -> Iterator[BarBatch]:
        """Batches in time order; ``received_ns`` is stamped as each one is handed out."""
        c = self._cols
        for ts, a, b in zip(self._stamps, self._starts, self._ends, strict=True):
            yield BarBatch(ts=ts, symbols=tuple(self._sym[a:b].tolist()),
                           open=c["open"][a:b], high=c["high"][a:b], low=c["low"][a:b],
                           close=c["close"][a:b], volume=c["volume"][a:b],
                           received_ns=time.perf_counter_ns())


class Pacer:
    """Sleeps so that bar time advances ``speed`` times faster than wall time."""

    def __init__(self, speed: str) -> None:
        self._factor = None if speed == "max" else float(speed)
        self._t0_wall = 0.0
        self._t0_bar: datetime | None = None

    async def wait_for(self, bar_ts: datetime) -> None:
        if self._factor is None:
            return
        if self._t0_bar is None:
            self._t0_bar, self._t0_wall = bar_ts, time.monotonic()
            return
        due = self._t0_wall + (bar_ts - self._t0_bar).total_seconds() / self._factor
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
