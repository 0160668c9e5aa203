"""The demo signal source: cross-sectional momentum (a deliberately simple rule).

Every ``every_bars`` batches, each symbol's return over the last ``lookback`` closes is
ranked across the symbols; its strength is the centred rank in [-1, 1] (best +1, worst
-1). Sizing turns strengths into target positions (long-only by default, so the losers
are simply not held). It exists so ``make run`` trades before a model is configured.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kernel.events import BarBatch, Event, SignalBatch
from kernel.model import Signal
from signals.config import DemoRuleConfig

SOURCE = "demo.momentum"


class MomentumRule:
    """Publishes one ``SignalBatch`` every ``every_bars`` batches once warmed up."""

    def __init__(self, cfg: DemoRuleConfig, publish: Callable[[Event], None]) -> None:
        self._cfg = cfg
        self._publish = publish
        self._index: dict[str, int] = {}
        self._ring = np.full((cfg.lookback + 1, 0), np.nan)
        self._n = 0

    def _column(self, batch: BarBatch) -> np.ndarray:
        idx = self._index
        new = [s for s in batch.symbols if s not in idx]
        if new:
            for s in new:
                idx[s] = len(idx)
            grow = np.full((self._ring.shape[0], len(new)), np.nan)
            self._ring = np.hstack([self._ring, grow])
        cols = np.fromiter((idx[s] for s in batch.symbols), np.intp, len(batch.symbols))
        return cols

    def on_bars(self, batch: BarBatch) -> None:
        cols = self._column(batch)
        row = self._n % self._ring.shape[0]
        self._ring[row] = self._ring[(row - 1) % self._ring.shape[0]]  # carry forward
        self._ring[row, cols] = batch.close
        self._n += 1
        if self._n <= self._cfg.lookback or self._n % self._cfg.every_bars:
            return
        oldest = self._ring[self._n % self._ring.shape[0]]
        ret = self._ring[row, cols] / oldest[cols] - 1.0
        ok = np.isfinite(ret)
        if ok.sum() < 2:
            return
        ranks = np.empty(ok.sum())
        ranks[np.argsort(ret[ok], kind="stable")] = np.arange(ok.sum())
        strength = 2.0 * ranks / (ok.sum() - 1) - 1.0
        ts = batch.ts
        stamp = ts.strftime("%Y%m%dT%H%M")
        syms = [s for s, good in zip(batch.symbols, ok, strict=True) if good]
        prices = batch.close[ok].tolist()
        signals = tuple(
            Signal(id=f"{SOURCE}:{stamp}:{s}", symbol=s, strength=round(float(k), 6),
                   price=p, ts=ts, source=SOURCE)
            for s, k, p in zip(syms, strength.tolist(), prices, strict=True)
        )
        self._publish(SignalBatch(ts=ts, source=SOURCE, signals=signals,
                                  received_ns=batch.received_ns))
