"""Prediction drift and entropy monitoring.

The live predictions of the last ``drift_window_batches`` batches are binned on the
decile edges of the validation-period predictions (so the reference histogram is about
uniform and its entropy about ln 10). Two things are judged once the window holds
``drift_min_predictions`` predictions:

* entropy collapse: the window's entropy falls below a share of the reference entropy
  (near-constant predictions: a broken input, a stuck feature, a degenerate model);
* drift: the population stability index (PSI) against the reference exceeds a bound.

Each has an alert level and a disable level (see ``ModelConfig``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kernel.model import FloatArray
from signals.config import ModelConfig
from signals.metrics import entropy, psi


class Level(enum.IntEnum):
    OK = 0
    ALERT = 1
    DISABLE = 2


@dataclass(frozen=True, slots=True)
class DriftStatus:
    """The window's figures and the level each check reached."""

    n: int
    entropy: float
    entropy_ratio: float
    psi: float
    entropy_level: Level
    psi_level: Level

    def detail(self, reference_entropy: float) -> dict[str, Any]:
        return {"predictions": self.n, "entropy": round(self.entropy, 4),
                "reference_entropy": round(reference_entropy, 4),
                "entropy_ratio": round(self.entropy_ratio, 4), "psi": round(self.psi, 4)}


class DriftMonitor:
    """Rolling histogram of predictions against the training reference.

    Args:
        cfg: window and thresholds.
        reference: the ``prediction`` section of the model's metadata (``bin_edges``,
            ``validation_hist``).
    """

    def __init__(self, cfg: ModelConfig, reference: dict[str, Any]) -> None:
        self.cfg = cfg
        self.edges = np.asarray(reference["bin_edges"], dtype=np.float64)
        self.reference = np.asarray(reference["validation_hist"], dtype=np.float64)
        if len(self.reference) != len(self.edges) + 1:
            raise ValueError("validation_hist must have one more bin than bin_edges")
        self.reference_entropy = entropy(self.reference)
        n_bins = len(self.reference)
        self._ring = np.zeros((cfg.drift_window_batches, n_bins), dtype=np.int64)
        self._total = np.zeros(n_bins, dtype=np.int64)
        self._ptr = 0

    def update(self, p: FloatArray) -> DriftStatus | None:
        """Add one batch's predictions; the status once the window is full enough."""
        counts = np.bincount(np.searchsorted(self.edges, p, side="right"),
                             minlength=len(self.reference))
        self._total += counts - self._ring[self._ptr]
        self._ring[self._ptr] = counts
        self._ptr = (self._ptr + 1) % len(self._ring)
        n = int(self._total.sum())
        if n < self.cfg.drift_min_predictions:
            return None
        live = self._total.astype(np.float64)
        h = entropy(live)
        ratio = h / self.reference_entropy if self.reference_entropy > 0 else 1.0
        d = psi(self.reference, live)
        cfg = self.cfg
        return DriftStatus(
            n=n, entropy=h, entropy_ratio=ratio, psi=d,
            entropy_level=_level(ratio < cfg.entropy_alert_ratio,
                                 ratio < cfg.entropy_disable_ratio),
            psi_level=_level(d > cfg.psi_alert, d > cfg.psi_disable),
        )

    @property
    def window_counts(self) -> npt.NDArray[np.int64]:
        return self._total.copy()


def _level(alert: bool, disable: bool) -> Level:
    return Level.DISABLE if disable else Level.ALERT if alert else Level.OK
