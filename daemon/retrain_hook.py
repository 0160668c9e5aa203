"""After the close of a live session: retrain the model and swap it in when it may run.

Training runs in a worker thread (``signals.retrain.retrain_recorded``: seconds to
minutes, nothing trades after the close). A swapped model is loaded, its features are
primed with the day just recorded (so the next session does not start cold), and it
replaces the running source in the ``ModelSlot``; otherwise the running model stays and
the reason is logged (``train.retrain_not_swapped`` / ``train.retrain_skipped``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from engine.feed import BarTape
from kernel.clock import Clock
from kernel.events import Event
from signals.config import ModelConfig
from signals.recorder import BarRecorder

if TYPE_CHECKING:
    from daemon.live import ModelSlot

log = structlog.get_logger("daemon.retrain")


async def retrain_and_swap(cfg: ModelConfig, *, slot: ModelSlot, recorder: BarRecorder,
                           through: date, out_dir: Path, clock: Clock,
                           publish: Callable[[Event], None]) -> dict[str, Any]:
    """Retrain through ``through`` and swap the model in ``slot`` when allowed; returns
    the fields of the ``session.closed`` line."""
    from signals.artifacts import load_model_dir
    from signals.model import ModelSignalSource
    from signals.retrain import retrain_recorded

    running = slot.source
    days = recorder.days(through)
    outcome = await asyncio.to_thread(
        retrain_recorded, cfg, days=days, through=through, out_dir=out_dir,
        horizon=running.horizon, running=running.model_path)
    if not outcome.swapped or outcome.model_path is None:
        return {"swapped": False, "reason": outcome.reason, "days": len(days)}
    loaded = await asyncio.to_thread(load_model_dir, outcome.model_path)
    fresh = ModelSignalSource(cfg, publish=publish, clock=clock, loaded=loaded)
    today = recorder.path_of(through)
    primed = fresh.prime(BarTape.from_csv(today).batches()) if today.exists() else 0
    slot.source = fresh
    log.info("model.swapped", path=str(outcome.model_path), previous=str(running.model_path),
             primed_batches=primed, through=through.isoformat())
    return {"swapped": True, "model": str(outcome.model_path), "days": len(days),
            "primed_batches": primed}


__all__ = ["retrain_and_swap"]
