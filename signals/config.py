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
    lookback: int = Field(30, ge=2)
    every_bars: int = Field(15, ge=1)


class ModelConfig(ComponentConfig):
    enabled: bool = False
    model_path: Path | None = None
    features_path: Path | None = None


class SignalsConfig(ComponentConfig):
    demo: DemoRuleConfig = DemoRuleConfig()
    model: ModelConfig = ModelConfig()
