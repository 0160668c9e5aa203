"""After the close: retrain the model on the bars the daemon recorded, through that day.

``retrain_recorded`` is synchronous and slow (feature computation and XGBoost fitting:
seconds to minutes): the live session runs it in a worker thread after the close, when
nothing trades. It trains in deploy mode (``signals.train.retrain``) on ``retrain_bars``
(older history, optional) followed by the recorded day files, through ``through``, into
``<out_dir>/model-<day>/``; the running model is swapped only when the outcome says so
(the feature version matches the running code and the model loads). Model directories
beyond the newest ``KEEP_MODELS`` are deleted, never the running model's.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pandas as pd
import structlog

from signals.bars import CSV_COLUMNS, read_bars_csv
from signals.config import ModelConfig
from signals.train import RetrainOutcome, retrain

log = structlog.get_logger("signals.retrain")

KEEP_MODELS = 3


def retrain_recorded(cfg: ModelConfig, *, days: Sequence[Path], through: date, out_dir: Path,
                     horizon: int, running: Path | None = None) -> RetrainOutcome:
    """Deploy-mode training on ``cfg.retrain_bars`` + ``days`` (see the module doc)."""
    files = ([cfg.retrain_bars] if cfg.retrain_bars is not None else []) + list(days)
    if not files:
        return RetrainOutcome(False, "no recorded bars to train on")
    out_dir.mkdir(parents=True, exist_ok=True)
    combined = out_dir / f".bars-{through.isoformat()}.csv"
    try:
        frames = [pd.read_csv(f, usecols=list(CSV_COLUMNS)) for f in files]
        pd.concat(frames, ignore_index=True).to_csv(combined, index=False)
        del frames
        bars = read_bars_csv(combined)
    except (OSError, ValueError) as exc:
        log.warning("train.retrain_skipped", through=str(through), reason=repr(exc))
        return RetrainOutcome(False, f"bars unreadable: {exc}")
    finally:
        combined.unlink(missing_ok=True)
    outcome = retrain(bars, through=through, out_dir=out_dir, horizon=horizon,
                      small=cfg.retrain_small)
    _prune(out_dir, keep={running.parent} if running is not None else set())
    return outcome


def _prune(out_dir: Path, *, keep: set[Path]) -> None:
    models = sorted(p for p in out_dir.glob("model-*") if p.is_dir())
    for old in models[:-KEEP_MODELS]:
        if old.resolve() not in {k.resolve() for k in keep}:  # never the running model
            shutil.rmtree(old, ignore_errors=True)


__all__ = ["KEEP_MODELS", "retrain_recorded"]
