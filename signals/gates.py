"""Feature gates: which symbols' features are fit to be scored right now.

A symbol is suppressed (no signal this bar; the others go on) for the first reason that
applies, in this order: ``STALE_DATA`` (no fresh bar), ``DATA_GAP`` (too many missing
bars recently), ``WARMUP`` (not enough history), ``FEATURE_NAN`` (a feature is NaN or
infinite), ``FEATURE_OUT_OF_RANGE`` (a feature lies beyond the training min/max widened
by ``range_iqr_k`` interquartile ranges: the model never saw such a value and trees
extrapolate flat, so the score would be meaningless).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kernel.model import FloatArray
from signals.config import ModelConfig
from signals.features import FEATURE_NAMES, FeatureFrame


class SuppressReason(enum.IntEnum):
    """Why a symbol's signal was held back (0 = not suppressed)."""

    NONE = 0
    STALE_DATA = 1
    DATA_GAP = 2
    WARMUP = 3
    FEATURE_NAN = 4
    FEATURE_OUT_OF_RANGE = 5


@dataclass(frozen=True, slots=True)
class GateResult:
    """Per symbol: the reason code (``SuppressReason``) and, for feature reasons, the
    index of the first offending feature (-1 otherwise)."""

    reason: npt.NDArray[np.int8]
    feature: npt.NDArray[np.intp]

    @property
    def ok(self) -> npt.NDArray[np.bool_]:
        ok: npt.NDArray[np.bool_] = self.reason == SuppressReason.NONE
        return ok


class FeatureGate:
    """Vectorised gate over a ``FeatureFrame`` with bounds from the training statistics."""

    def __init__(self, cfg: ModelConfig, feature_stats: dict[str, dict[str, Any]]) -> None:
        self.cfg = cfg
        self.low, self.high = training_bounds(feature_stats, cfg.range_iqr_k)
        self.counts = dict.fromkeys((r.name for r in SuppressReason if r), 0)

    def check(self, frame: FeatureFrame) -> GateResult:
        """Reasons for every symbol of ``frame``; also adds them to ``counts``."""
        x = frame.values
        with np.errstate(invalid="ignore"):
            bad_nan = ~np.isfinite(x)
            bad_range = (x < self.low) | (x > self.high)
        cfg = self.cfg
        reason = np.zeros(len(x), dtype=np.int8)
        feature = np.full(len(x), -1, dtype=np.intp)
        # Lowest precedence first: a later (stronger) reason overwrites an earlier one.
        for code, hit, cols in (
            (SuppressReason.FEATURE_OUT_OF_RANGE, bad_range.any(axis=1), bad_range),
            (SuppressReason.FEATURE_NAN, bad_nan.any(axis=1), bad_nan),
            (SuppressReason.WARMUP, ~frame.warm, None),
            (SuppressReason.DATA_GAP, frame.gaps > cfg.max_gap_bars, None),
            (SuppressReason.STALE_DATA, frame.stale_bars > cfg.max_stale_bars, None),
        ):
            if hit.any():
                reason[hit] = code
                feature[hit] = cols[hit].argmax(axis=1) if cols is not None else -1
        if reason.any():
            for i, n in enumerate(np.bincount(reason, minlength=len(SuppressReason))):
                if i and n:
                    self.counts[SuppressReason(i).name] += int(n)
        return GateResult(reason, feature)


def training_bounds(stats: dict[str, dict[str, Any]], k: float) -> tuple[FloatArray,
                                                                          FloatArray]:
    """Allowed range per feature: [min - k IQR, max + k IQR] of the training rows
    (unbounded for a feature without statistics)."""
    low = np.full(len(FEATURE_NAMES), -np.inf)
    high = np.full(len(FEATURE_NAMES), np.inf)
    for j, name in enumerate(FEATURE_NAMES):
        s = stats.get(name)
        if not s or not s.get("count"):
            continue
        iqr = s["q75"] - s["q25"]
        low[j] = s["min"] - k * iqr
        high[j] = s["max"] + k * iqr
    return low, high
