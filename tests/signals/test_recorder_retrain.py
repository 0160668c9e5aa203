"""Live bars recorded per day, and the after-close retrain that swaps the running model."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from config.settings import Settings
from daemon.live import ModelSlot
from daemon.retrain_hook import retrain_and_swap
from engine.feed import BarTape
from kernel.clock import ReplayClock
from kernel.events import Event, SessionPhase
from signals.artifacts import MODEL_FILE, load_model_dir
from signals.bars import read_bars_csv
from signals.config import ModelConfig
from signals.model import ModelSignalSource
from signals.recorder import BarRecorder
from signals.train import retrain
from tests.signals.test_train import write_synthetic_csv


def record(csv: Path, recorder: BarRecorder) -> int:
    n = 0
    for batch in BarTape.from_csv(csv).batches():
        recorder.on_bars(batch)
        n += 1
    recorder.close()
    return n


class TestBarRecorder:
    def test_on_bars_when_days_pass_then_one_file_per_day_equal_to_the_bars(
            self, tmp_path: Path) -> None:
        # Arrange
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=5, days=3, seed=4)
        rec = BarRecorder(tmp_path / "bars", keep_days=2)
        # Act
        record(csv, rec)
        # Assert: the files read back as the same bars
        files = rec.days()
        assert [p.name for p in files] == [
            "bars-2024-03-04.csv", "bars-2024-03-05.csv", "bars-2024-03-06.csv"]
        src = read_bars_csv(csv)
        back = [read_bars_csv(p) for p in files]
        assert sum(len(b) for b in back) == len(src)
        np.testing.assert_array_equal(np.concatenate([b.close for b in back]), src.close)
        assert rec.days(through=date(2024, 3, 5)) == files[:2]
        # the retrain window is bounded on disk
        assert rec.prune() == 1 and rec.days() == files[1:]


def running_model(tmp: Path, csv: Path) -> tuple[ModelConfig, ModelSignalSource]:
    """A model trained through Tuesday, running."""
    first = retrain(read_bars_csv(csv), through=date(2024, 3, 5), out_dir=tmp / "start",
                    small=True)
    assert first.model_path is not None
    cfg = ModelConfig(enabled=True, model_path=first.model_path, retrain=True,
                      retrain_small=True)
    return cfg, ModelSignalSource(cfg, publish=lambda e: None, clock=ReplayClock())


class TestRetrainAndSwap:
    async def test_close_when_retrain_on_then_model_through_the_day_swapped_and_primed(
            self, tmp_path: Path) -> None:
        # Arrange: Monday to Wednesday recorded live
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=12, days=3, seed=2)
        cfg, running = running_model(tmp_path, csv)
        slot = ModelSlot(running)
        rec = BarRecorder(tmp_path / "state" / "bars", keep_days=20)
        record(csv, rec)
        published: list[Event] = []
        # Act: Wednesday's close
        out = await retrain_and_swap(cfg, slot=slot, recorder=rec, through=date(2024, 3, 6),
                                     out_dir=tmp_path / "state" / "models", clock=ReplayClock(),
                                     publish=published.append)
        # Assert: trained through Wednesday, swapped, warm for the next session
        new_path = tmp_path / "state" / "models" / "model-2024-03-06" / MODEL_FILE
        assert out["swapped"] is True and out["model"] == str(new_path) and out["days"] == 3
        assert slot.source is not running and slot.source.model_path == new_path
        meta = load_model_dir(new_path).metadata
        assert meta["mode"] == "deploy" and meta["ranges"]["validation"][1] == "2024-03-06"
        assert out["primed_batches"] > 0 and slot.source.engine.warm_symbols().any()

    async def test_close_when_nothing_recorded_then_running_model_stays(
            self, tmp_path: Path) -> None:
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=12, days=3, seed=2)
        cfg, running = running_model(tmp_path, csv)
        slot = ModelSlot(running)
        out = await retrain_and_swap(cfg, slot=slot,
                                     recorder=BarRecorder(tmp_path / "none", keep_days=5),
                                     through=date(2024, 3, 6), out_dir=tmp_path / "models",
                                     clock=ReplayClock(), publish=lambda e: None)
        assert out == {"swapped": False, "reason": "no recorded bars to train on", "days": 0}
        assert slot.source is running


class TestWarmup:
    async def test_warmup_when_history_then_features_primed_from_previous_session_open(
            self, tmp_path: Path) -> None:
        # Arrange: the broker's history is the synthetic Monday to Wednesday
        from daemon.live import LiveDriver
        from engine.session import PhaseAt
        from kernel.errors import BrokerUnavailable

        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=12, days=3, seed=2)
        _, running = running_model(tmp_path, csv)
        asked: list[tuple[list[str], object]] = []

        async def history(symbols: list[str], start: object, end: object) -> list[Any]:
            asked.append((symbols, start))
            return list(BarTape.from_csv(csv).batches())

        d = LiveDriver(Settings(daemon={"state_dir": tmp_path}),  # type: ignore[arg-type]
                       systems=[], clock=ReplayClock(), publish=lambda e: None, environ={},
                       on_failure=lambda e: None, on_finished=lambda w: None,
                       history=history, model=ModelSlot(running))
        session = d.calendar.session_on(date(2024, 3, 7))
        assert session is not None
        at: PhaseAt = d.calendar.phase_of(session, SessionPhase.WARMUP)
        # Act
        out = await d.hooks.on_warmup(at)  # type: ignore[misc]
        # Assert
        assert out is not None and out["primed_batches"] == 3 * 391
        assert asked == [(list(running.symbols), d.calendar.previous_session(session.date).open)]
        assert running.engine.warm_symbols().all()

        # A broker that cannot answer: the model warms up on live bars; nothing fails
        async def down(symbols: list[str], start: object, end: object) -> list[Any]:
            raise BrokerUnavailable("data API down")

        d.history = down
        out = await d.hooks.on_warmup(at)  # type: ignore[misc]
        assert out is not None and out["primed_batches"] == 0 and "data API down" in out["error"]
