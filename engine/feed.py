"""Bar replay: CSV bars (``timestamp,symbol,open,high,low,close,volume``, optionally
gzipped) grouped into one ``BarBatch`` per timestamp, at real time, N x speed, or as fast
as possible.

A replay file is read in chunks of ``chunk_rows`` rows (pandas' C parser), so a tape of
any length costs the memory of one chunk: a first pass reads only the timestamp and
symbol columns (row and batch counts, the symbol list, and whether the file is in time
order), a second one yields the batches. A file that is not in time order cannot be
streamed; it is loaded whole and sorted (logged ``feed.replay_unsorted``: memory then
grows with the file). Within a batch, symbols are sorted.

Timestamps are the bar *start*; the replay clock is set to the bar's *end* (start +
interval) when it is published, since that is when such a bar exists in a live feed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import structlog

from kernel.errors import ConfigError
from kernel.events import BarBatch

log = structlog.get_logger("engine.feed")

COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
PRICES = ("open", "high", "low", "close", "volume")
CHUNK_ROWS = 50_000
_EPOCH = datetime.fromtimestamp(0, UTC)

Int64s = npt.NDArray[np.int64]


def _stamp(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _check_columns(columns: list[str]) -> None:
    if any(c not in columns for c in COLUMNS):
        raise ConfigError("feed.replay", list(columns), f"columns {COLUMNS}")


def _ns(stamps: pd.Series) -> Int64s:
    ns: Int64s = (pd.to_datetime(stamps, utc=True).dt.tz_localize(None)
                  .to_numpy(dtype="datetime64[ns]").astype(np.int64))
    return ns


class _Rows:
    """Rows sorted by (timestamp, symbol), column-wise."""

    def __init__(self, ts: Int64s, sym: npt.NDArray[np.object_],
                 cols: dict[str, npt.NDArray[np.float64]]) -> None:
        order = np.lexsort((sym.astype(str), ts))
        self.ts = ts[order]
        self.sym = sym[order]
        self.cols = {c: v[order] for c, v in cols.items()}

    @classmethod
    def of(cls, frame: pd.DataFrame) -> _Rows:
        return cls(_ns(frame["timestamp"]), frame["symbol"].to_numpy(dtype=object),
                   {c: frame[c].to_numpy(dtype=np.float64) for c in PRICES})

    def join(self, other: _Rows) -> _Rows:
        return _Rows(np.concatenate([self.ts, other.ts]),
                     np.concatenate([self.sym, other.sym]),
                     {c: np.concatenate([v, other.cols[c]]) for c, v in self.cols.items()})

    def tail(self, start: int) -> _Rows:
        return _Rows(self.ts[start:], self.sym[start:],
                     {c: v[start:] for c, v in self.cols.items()})

    def __len__(self) -> int:
        return len(self.ts)

    def batches(self, upto: int | None = None) -> Iterator[BarBatch]:
        """Batches of the first ``upto`` rows (all), which must end on a timestamp."""
        ts = self.ts[:upto]
        if not len(ts):
            return
        cut = np.flatnonzero(ts[1:] != ts[:-1]) + 1
        starts = [0, *cut.tolist()]
        ends = [*starts[1:], len(ts)]
        c = self.cols
        for a, b in zip(starts, ends, strict=True):
            yield BarBatch(ts=_stamp(int(ts[a])),
                           symbols=tuple(self.sym[a:b].tolist()),
                           open=c["open"][a:b], high=c["high"][a:b], low=c["low"][a:b],
                           close=c["close"][a:b], volume=c["volume"][a:b],
                           received_ns=time.perf_counter_ns())


class BarTape:
    """Bars to replay, one ``BarBatch`` per timestamp.

    ``BarTape(frame)`` holds a frame in memory; ``BarTape.from_csv(path)`` streams the
    file in chunks (see the module doc). ``len``, ``rows`` and ``symbols`` are known
    before the first batch.
    """

    def __init__(self, frame: pd.DataFrame, interval: timedelta = timedelta(minutes=1)) -> None:
        _check_columns(list(frame.columns))
        self.interval = interval
        self._rows: _Rows | None = _Rows.of(frame)
        self._path: Path | None = None
        self._chunk_rows = CHUNK_ROWS
        ts = self._rows.ts
        self._count = int(np.count_nonzero(ts[1:] != ts[:-1]) + 1) if len(ts) else 0
        self._n_rows = len(ts)
        self._symbols = sorted(set(self._rows.sym.tolist()))
        self._first = _stamp(int(ts[0])) if len(ts) else None

    @classmethod
    def from_csv(cls, path: Path, *, chunk_rows: int = CHUNK_ROWS,
                 interval: timedelta = timedelta(minutes=1)) -> BarTape:
        """A tape over ``path``: streamed when the file is in time order.

        Raises:
            ConfigError: the file is missing or lacks a column.
        """
        try:
            header = pd.read_csv(path, nrows=0)
        except FileNotFoundError:
            raise ConfigError("feed.replay", str(path), "an existing CSV file") from None
        _check_columns(list(header.columns))
        tape = cls.__new__(cls)
        tape.interval = interval
        tape._path, tape._rows, tape._chunk_rows = path, None, chunk_rows
        if not tape._scan():
            log.warning("feed.replay_unsorted", path=str(path), rows=tape._n_rows,
                        detail="not in time order: loaded whole and sorted")
            return cls(pd.read_csv(path, dtype={"symbol": str}), interval)
        return tape

    def _scan(self) -> bool:
        """Counts, symbols and time order from the timestamp and symbol columns only.
        False as soon as a timestamp goes back."""
        assert self._path is not None
        count = rows = 0
        last: int | None = None
        first: int | None = None
        symbols: set[str] = set()
        for chunk in pd.read_csv(self._path, usecols=["timestamp", "symbol"],
                                 dtype={"symbol": str}, chunksize=self._chunk_rows):
            ts = _ns(chunk["timestamp"])
            if len(ts) and ((last is not None and ts[0] < last) or np.any(ts[1:] < ts[:-1])):
                self._n_rows = rows + len(ts)
                return False
            if first is None and len(ts):
                first = int(ts[0])
            count += int(np.count_nonzero(ts[1:] != ts[:-1]))
            count += 1 if len(ts) and (last is None or ts[0] != last) else 0
            rows += len(ts)
            last = int(ts[-1]) if len(ts) else last
            symbols.update(chunk["symbol"].unique().tolist())
        self._count, self._n_rows, self._symbols = count, rows, sorted(symbols)
        self._first = _stamp(first) if first is not None else None
        return True

    def __len__(self) -> int:
        return self._count

    @property
    def rows(self) -> int:
        return self._n_rows

    @property
    def symbols(self) -> list[str]:
        return list(self._symbols)

    @property
    def first_ts(self) -> datetime | None:
        """The first bar's start, or None for an empty tape."""
        return self._first

    def batches(self) -> Iterator[BarBatch]:
        """Batches in time order; ``received_ns`` is stamped as each one is handed out."""
        if self._rows is not None:
            yield from self._rows.batches()
            return
        yield from self._stream()

    def _stream(self) -> Iterator[BarBatch]:
        """Chunk by chunk; the rows of a chunk's last timestamp wait for the next chunk
        (the timestamp may continue there)."""
        assert self._path is not None
        carry: _Rows | None = None
        for chunk in pd.read_csv(self._path, dtype={"symbol": str},
                                 chunksize=self._chunk_rows):
            rows = _Rows.of(chunk)
            if not len(rows):
                continue
            rows = rows if carry is None else carry.join(rows)
            upto = int(np.searchsorted(rows.ts, rows.ts[-1], side="left"))
            yield from rows.batches(upto)
            carry = rows.tail(upto)
        if carry is not None:
            yield from carry.batches()


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
