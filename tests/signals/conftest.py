"""Shared fixtures: the real minute bars under ``<repo>/../shared/data/market``.

The data ship with the repository's checkout layout (CI has them too), so tests that
need them fail loudly instead of skipping when they are missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from signals.bars import DenseBars, read_bars_csv
from tests.signals.mqtt_fixtures import mosquitto, mosquitto_auth

__all__ = ["mosquitto", "mosquitto_auth"]  # the MQTT tests' real-broker fixtures

REPO = Path(__file__).resolve().parents[2]
SAMPLE = "us_equities_1min_sample_2018-02-16_2018-02-23.csv"
FULL = "us_equities_1min_2018-02-16_2018-04-20.csv.gz"


def market_dir() -> Path:
    """``shared/data/market`` next to the checkout (a worktree may sit one level deeper)."""
    for base in (REPO, *REPO.parents):
        candidate = base / "shared" / "data" / "market"
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no shared/data/market above {REPO}")


@pytest.fixture(scope="session")
def sample_bars() -> DenseBars:
    """10 symbols x 5 trading days of real minute bars."""
    return read_bars_csv(market_dir() / SAMPLE)


@pytest.fixture(scope="session")
def wide_bars() -> DenseBars:
    """The first 53 symbols alphabetically x the first 3 trading days (real gaps: CHTR)."""
    return read_bars_csv(market_dir() / FULL, first_symbols=53, days=3)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained on the 10-symbol sample with the real CLI (a few seconds):
    four days to fit and validate, the fifth held out."""
    from signals.train import main

    out = tmp_path_factory.mktemp("model")
    code = main(["--bars", str(market_dir() / SAMPLE), "--out", str(out), "--small",
                 "--train-until", "2018-02-22"])
    assert code == 0
    return out
