"""Signal source configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from config.base import ComponentConfig


class DemoRuleConfig(ComponentConfig):
    """Cross-sectional momentum demo rule (``signals.demo.MomentumRule``).

    Every ``every_bars`` batches, each symbol's return over ``lookback`` bars is ranked
    across symbols; the strength is its centred rank scaled to [-1, 1] (long-only
    configs simply never go below zero after sizing)."""

    enabled: bool = True
    lookback: int = Field(default=30, ge=2)
    every_bars: int = Field(default=15, ge=1)


class ModelConfig(ComponentConfig):
    """XGBoost signal source (``signals.model.ModelSignalSource``), its feature gates and
    its drift monitor. Paths are those ``tradingd train --out DIR`` writes."""

    enabled: bool = False
    model_path: Path | None = Field(default=None, description="DIR/model.ubj")
    features_path: Path | None = Field(
        default=None, description="ordered feature list; default: features.json beside the model")
    metadata_path: Path | None = Field(
        default=None, description="training metadata; default: metadata.json beside the model")
    nthread: int = Field(default=1, ge=1, description="xgboost threads for inference")
    bar_seconds: int = Field(default=60, ge=1, description="bar interval, to detect skipped bars")
    strength_scale: float | None = Field(
        default=None, gt=0,
        description="strength = clip((2p - 1) * scale, -1, 1); default from training: the "
                    "99th percentile of |2p - 1| on the validation period maps to 1")
    range_iqr_k: float = Field(
        default=3.0, ge=0,
        description="FEATURE_OUT_OF_RANGE beyond the training min/max widened by k x IQR")
    max_stale_bars: int = Field(
        default=0, ge=0, description="STALE_DATA when a symbol missed more consecutive bars")
    gap_window_bars: int = Field(default=30, ge=1, description="window of the DATA_GAP count")
    max_gap_bars: int = Field(
        default=5, ge=0, description="DATA_GAP when more bars are missing in the gap window")
    # Window and PSI bounds chosen on the validation period: with 30 batches the rolling PSI
    # of a 53-symbol model against its own validation reference reached 0.45 (predictions
    # within half an hour are correlated), so 0.25 would cry wolf.
    drift_window_batches: int = Field(
        default=60, ge=1, description="batches of predictions the drift monitor looks at")
    drift_min_predictions: int = Field(
        default=300, ge=1, description="predictions needed in the window before judging drift")
    psi_alert: float = Field(default=0.5, gt=0, description="model.drift alert above this PSI")
    psi_disable: float = Field(default=2.0, gt=0, description="stop model signals above this PSI")
    entropy_alert_ratio: float = Field(
        default=0.5, ge=0, le=1,
        description="model.entropy_collapse alert below this share of the training entropy")
    entropy_disable_ratio: float = Field(
        default=0.2, ge=0, le=1, description="stop model signals below this share")


class SignalsConfig(ComponentConfig):
    demo: DemoRuleConfig = DemoRuleConfig()
    model: ModelConfig = ModelConfig()
