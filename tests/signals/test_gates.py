"""Feature gates and the drift monitor as units."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from signals.config import ModelConfig
from signals.drift import DriftMonitor, Level
from signals.features import FEATURE_NAMES, FeatureFrame
from signals.gates import FeatureGate, SuppressReason

F = len(FEATURE_NAMES)
STATS = {name: {"count": 100, "min": -1.0, "max": 1.0, "q25": -0.5, "q75": 0.5}
         for name in FEATURE_NAMES}


def _frame(n: int = 6) -> FeatureFrame:
    return FeatureFrame(
        ts=datetime(2024, 1, 2, 15, tzinfo=UTC), values=np.zeros((n, F)), close=np.ones(n),
        present=np.ones(n, dtype=np.bool_), invalid=np.zeros(n, dtype=np.bool_),
        warm=np.ones(n, dtype=np.bool_), stale_bars=np.zeros(n, dtype=np.int64),
        gaps=np.zeros(n, dtype=np.int64), minute_of_session=90,
    )


class TestFeatureGate:
    def test_check_when_several_problems_then_first_reason_by_precedence(self) -> None:
        # Arrange
        gate = FeatureGate(ModelConfig(range_iqr_k=2.0), STATS)
        fr = _frame()
        fr.values[1, 3] = np.nan
        fr.values[2, 7] = 2.5  # max 1 + 2 x IQR 1 = 3: inside
        fr.values[3, 7] = 3.5  # outside
        fr.values[4, 5] = np.inf
        fr.stale_bars[4] = 1  # stale beats the inf
        fr.warm[5] = False
        fr.gaps[5] = 9  # a gap beats warm-up
        # Act
        res = gate.check(fr)
        # Assert
        assert res.reason.tolist() == [
            0, SuppressReason.FEATURE_NAN, 0, SuppressReason.FEATURE_OUT_OF_RANGE,
            SuppressReason.STALE_DATA, SuppressReason.DATA_GAP,
        ]
        assert res.feature[1] == 3 and res.feature[3] == 7 and res.feature[4] == -1
        assert res.ok.tolist() == [True, False, True, False, False, False]
        assert gate.counts == {"STALE_DATA": 1, "DATA_GAP": 1, "WARMUP": 0,
                               "FEATURE_NAN": 1, "FEATURE_OUT_OF_RANGE": 1}


REFERENCE = {"bin_edges": np.linspace(0.1, 0.9, 9).tolist(), "validation_hist": [100] * 10}


class TestDriftMonitor:
    def test_update_when_window_not_full_then_no_judgement(self) -> None:
        mon = DriftMonitor(ModelConfig(drift_min_predictions=100), REFERENCE)
        assert mon.update(np.full(50, 0.5)) is None

    def test_update_when_predictions_match_reference_then_ok(self) -> None:
        mon = DriftMonitor(ModelConfig(drift_window_batches=5, drift_min_predictions=100),
                           REFERENCE)
        rng = np.random.default_rng(0)
        status = None
        for _ in range(5):
            status = mon.update(rng.uniform(0, 1, size=200))
        assert status is not None
        assert status.entropy_level == Level.OK and status.psi_level == Level.OK

    def test_update_when_predictions_shift_to_one_side_then_psi_disables(self) -> None:
        mon = DriftMonitor(ModelConfig(drift_window_batches=5, drift_min_predictions=100),
                           REFERENCE)
        rng = np.random.default_rng(0)
        status = None
        for _ in range(5):
            status = mon.update(rng.uniform(0.55, 1.0, size=200))  # top half of the bins
        assert status is not None
        assert status.psi > 2.0 and status.psi_level == Level.DISABLE
        assert status.entropy_level == Level.OK  # spread over 5 bins: not a collapse
