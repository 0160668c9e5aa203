"""The live bars a daemon saw, on disk: one CSV per New York trading day.

``BarRecorder.on_bars`` (a ``BarBatch`` subscriber) appends each batch to
``<dir>/bars-<YYYY-MM-DD>.csv`` in the format ``tradingd train`` and the replay read
(``timestamp,symbol,open,high,low,close,volume``; bar start, UTC), flushed per batch so a
crash loses at most the batch being written. Nothing is kept in memory but the open file.
``prune`` keeps the newest ``keep_days`` files (the retrain window): disk use is bounded.

The model retrain after the close (``signals.retrain``) trains on these files.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import TextIO

import structlog

from kernel.events import BarBatch
from kernel.time import trading_day

log = structlog.get_logger("signals.recorder")

HEADER = "timestamp,symbol,open,high,low,close,volume\n"
_PREFIX, _SUFFIX = "bars-", ".csv"


class BarRecorder:
    """Appends live bar batches to one CSV per trading day (see the module doc)."""

    def __init__(self, directory: Path, *, keep_days: int) -> None:
        self.dir = directory
        self.keep_days = keep_days
        self._day = ""
        self._fh: TextIO | None = None
        self.rows = 0

    def path_of(self, day: date | str) -> Path:
        text = day if isinstance(day, str) else day.isoformat()
        return self.dir / f"{_PREFIX}{text}{_SUFFIX}"

    def on_bars(self, batch: BarBatch) -> None:
        """Bus handler: one line per symbol of the batch."""
        day = trading_day(batch.ts)
        if day != self._day or self._fh is None:
            self._open(day)
        fh = self._fh
        assert fh is not None
        stamp = batch.ts.isoformat()
        lines = []
        for i, sym in enumerate(batch.symbols):
            o, h, lo, c, v = (float(batch.open[i]), float(batch.high[i]),
                              float(batch.low[i]), float(batch.close[i]),
                              float(batch.volume[i]))
            if math.isnan(c):
                continue
            lines.append(f"{stamp},{sym},{o!r},{h!r},{lo!r},{c!r},{v!r}\n")
        fh.writelines(lines)
        fh.flush()
        self.rows += len(lines)

    def _open(self, day: str) -> None:
        self.close()
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path_of(day)
        fresh = not path.exists() or path.stat().st_size == 0
        self._fh = path.open("a", encoding="ascii")
        if fresh:
            self._fh.write(HEADER)
        self._day = day

    def days(self, through: date | None = None) -> list[Path]:
        """The recorded day files, oldest first (through ``through`` when given)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob(f"{_PREFIX}*{_SUFFIX}")):
            day = p.name[len(_PREFIX):-len(_SUFFIX)]
            if through is None or day <= through.isoformat():
                out.append(p)
        return out

    def prune(self) -> int:
        """Delete all but the newest ``keep_days`` day files; returns how many went."""
        old = self.days()[:-self.keep_days]
        for p in old:
            if p != self.path_of(self._day):
                p.unlink(missing_ok=True)
        if old:
            log.info("recorder.pruned", files=len(old), keep_days=self.keep_days)
        return len(old)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


__all__ = ["HEADER", "BarRecorder"]
