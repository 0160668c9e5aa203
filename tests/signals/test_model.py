"""Live model source: signals, feature gates, drift/entropy stop, model/feature checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from structlog.testing import capture_logs

from kernel.bus import Bus
from kernel.clock import ReplayClock
from kernel.errors import ConfigError
from kernel.events import AlertRaised, BarBatch, Event, SignalBatch
from signals.artifacts import METADATA_FILE, MODEL_FILE, LoadedModel, load_model_dir
from signals.bars import DenseBars
from signals.config import ModelConfig
from signals.features import FEATURE_NAMES, FeatureEngine, FeatureFrame
from signals.model import ModelSignalSource


class CorruptingEngine(FeatureEngine):
    """A real engine whose output is corrupted for chosen symbols (a recording fake)."""

    def __init__(self, symbols: tuple[str, ...], corrupt: dict[str, tuple[str, float]]) -> None:
        super().__init__(symbols)
        self.corrupt = {self.symbols.index(s): (FEATURE_NAMES.index(f), v)
                        for s, (f, v) in corrupt.items()}

    def update(self, batch: BarBatch) -> FeatureFrame:
        frame = super().update(batch)
        for i, (j, v) in self.corrupt.items():
            frame.values[i, j] = v
        return frame


def _source(model_dir: Path, events: list[Event], *, engine: FeatureEngine | None = None,
            **cfg: Any) -> ModelSignalSource:
    config = ModelConfig(enabled=True, model_path=model_dir / MODEL_FILE, **cfg)
    return ModelSignalSource(config, publish=events.append, clock=ReplayClock(),
                             engine=engine)


def _replay(src: ModelSignalSource, bars: DenseBars) -> None:
    for batch in bars.batches():
        src._clock.set(batch.ts)  # type: ignore[attr-defined]
        src.on_bars(batch)


def _signal_batches(events: list[Event]) -> list[SignalBatch]:
    return [e for e in events if isinstance(e, SignalBatch)]


class TestSignals:
    def test_replay_when_model_loaded_then_one_batch_per_bar_with_valid_signals(
        self, small_model_dir: Path, sample_bars: DenseBars
    ) -> None:
        # Arrange
        events: list[Event] = []
        src = _source(small_model_dir, events)
        bars = sample_bars.until_day(2)
        # Act
        _replay(src, bars)
        # Assert
        batches = _signal_batches(events)
        assert len(batches) > 300  # day 2 fully, the end of day 1 after warm-up
        assert len({b.signals[0].id.split(":", 1)[1][:25] for b in batches}) == len(batches)
        last = batches[-1]
        assert last.source == "model"
        assert {s.symbol for s in last.signals} <= set(bars.symbols)
        assert all(-1.0 <= s.strength <= 1.0 for b in batches for s in b.signals)
        # the last signalling bar is 15:44 New York: horizon (15) minutes before the close
        t = len(bars) - 16
        assert bars.timestamp(t).isoformat() == "2018-02-20T20:44:00+00:00"
        sym = last.signals[0].symbol
        assert last.signals[0].price == bars.close[t, bars.symbols.index(sym)]
        assert last.signals[0].id == f"model:{bars.timestamp(t).isoformat()}:{sym}"
        strengths = np.array([s.strength for b in batches for s in b.signals])
        assert strengths.std() > 0.05  # a real spread of opinions, not a constant

    def test_replay_when_run_twice_then_identical_signals(
        self, small_model_dir: Path, sample_bars: DenseBars
    ) -> None:
        runs = []
        for _ in range(2):
            events: list[Event] = []
            _replay(_source(small_model_dir, events), sample_bars.until_day(2))
            runs.append([(s.id, s.strength) for b in _signal_batches(events)
                         for s in b.signals])
        assert runs[0] == runs[1]


class TestPrime:
    def test_prime_when_previous_session_fed_then_signals_from_the_open(
        self, small_model_dir: Path, sample_bars: DenseBars
    ) -> None:
        # Arrange
        events: list[Event] = []
        src = _source(small_model_dir, events)
        day1 = sample_bars.until_day(1)
        n1 = len(day1)
        # Act
        applied = src.prime(day1.batches())
        _replay(src, sample_bars.slice_rows(n1, n1 + 5))  # 09:29 .. 09:33 of day 2
        # Assert
        assert applied == n1
        batches = _signal_batches(events)
        assert len(batches) == 4  # 09:30 .. 09:33: no hour of warm-up
        assert len(batches[0].signals) == len(sample_bars.symbols)


class TestFeatureGates:
    def test_feature_when_nan_or_out_of_range_then_only_that_symbol_suppressed(
        self, small_model_dir: Path, sample_bars: DenseBars
    ) -> None:
        # Arrange
        events: list[Event] = []
        syms = sample_bars.symbols
        engine = CorruptingEngine(syms, {syms[0]: ("rsi_14", float("nan")),
                                         syms[1]: ("ret_15", 0.5)})
        src = _source(small_model_dir, events, engine=engine)
        # Act
        with capture_logs() as logs:
            _replay(src, sample_bars.until_day(2))
        # Assert
        last = _signal_batches(events)[-1]
        got = {s.symbol for s in last.signals}
        assert syms[0] not in got and syms[1] not in got
        assert set(syms[2:]) <= got
        suppress = {(e["symbol"], e["reason"], e["feature"]) for e in logs
                    if e["event"] == "model.suppress"}
        assert (syms[0], "FEATURE_NAN", "rsi_14") in suppress
        assert (syms[1], "FEATURE_OUT_OF_RANGE", "ret_15") in suppress
        counts = src.suppressed_counts
        assert counts["FEATURE_NAN"] > 300 and counts["FEATURE_OUT_OF_RANGE"] > 300

    def test_symbol_when_bar_missing_then_stale_and_others_still_signal(
        self, small_model_dir: Path, sample_bars: DenseBars
    ) -> None:
        # Arrange
        events: list[Event] = []
        src = _source(small_model_dir, events)
        bars = sample_bars.until_day(2)
        t = len(bars) - 30  # 15:30 New York, inside the model's trading window
        _replay(src, bars.slice_rows(0, t))
        last = next(iter(bars.slice_rows(t, t + 1).batches()))
        keep = np.arange(1, len(last.symbols))  # the first symbol's bar never arrives
        partial = BarBatch(ts=last.ts, symbols=last.symbols[1:], open=last.open[keep],
                           high=last.high[keep], low=last.low[keep], close=last.close[keep],
                           volume=last.volume[keep])
        # Act
        with capture_logs() as logs:
            src.on_bars(partial)
        # Assert
        got = {s.symbol for s in _signal_batches(events)[-1].signals}
        assert last.symbols[0] not in got and set(last.symbols[1:]) <= got
        assert {"event": "model.suppress", "symbol": last.symbols[0],
                "reason": "STALE_DATA"}.items() <= next(
            e for e in logs if e["event"] == "model.suppress").items()

    def test_warmup_when_history_short_then_no_signals(
        self, small_model_dir: Path, sample_bars: DenseBars
    ) -> None:
        events: list[Event] = []
        src = _source(small_model_dir, events)
        _replay(src, sample_bars.slice_rows(0, 50))
        assert _signal_batches(events) == []
        assert src.suppressed_counts["WARMUP"] > 0


def _constant_model(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model directory whose booster predicts the same value for all."""
    x = np.random.default_rng(0).normal(size=(200, len(FEATURE_NAMES)))
    booster = xgb.train({"objective": "binary:logistic", "nthread": 1, "max_depth": 1},
                        xgb.DMatrix(x, label=np.ones(200), feature_names=list(FEATURE_NAMES)),
                        num_boost_round=1)
    for name in (METADATA_FILE, "features.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    booster.save_model(str(tmp_path / MODEL_FILE))
    return tmp_path


class TestDrift:
    def test_constant_predictions_when_window_full_then_entropy_alarm_and_signals_stop(
        self, small_model_dir: Path, sample_bars: DenseBars, tmp_path: Path
    ) -> None:
        # Arrange: a real bus with the model and another BarBatch subscriber
        events: list[Event] = []
        bus = Bus()
        cfg = ModelConfig(enabled=True,
                          model_path=_constant_model(small_model_dir, tmp_path) / MODEL_FILE,
                          drift_window_batches=20, drift_min_predictions=150)
        src = ModelSignalSource(cfg, publish=bus.publish, clock=ReplayClock())
        others: list[BarBatch] = []
        bus.subscribe(BarBatch, src.on_bars)
        bus.subscribe(BarBatch, others.append)
        bus.subscribe(SignalBatch, events.append)
        bus.subscribe(AlertRaised, events.append)
        bars = sample_bars.until_day(2)
        # Act
        with capture_logs() as logs:
            for batch in bars.batches():
                bus.publish(batch)
        # Assert: the daemon goes on (bus healthy, other subscribers fed to the end)
        assert not bus.stopped and len(others) == len(bars)
        alerts = [e for e in events if isinstance(e, AlertRaised)]
        assert alerts and alerts[0].name == "model.entropy_collapse"
        assert alerts[0].severity == "critical" and alerts[0].detail["disabled"] is True
        assert alerts[0].detail["entropy_ratio"] < 0.2
        assert src.disabled
        assert any(e["event"] == "model.disabled" for e in logs)
        stop_at = events.index(alerts[0])
        assert not _signal_batches(events[stop_at:])  # nothing after the alarm
        assert len(_signal_batches(events)) < 20  # only until the window filled

    def test_real_model_when_replayed_on_its_own_period_then_no_alarm(
        self, small_model_dir: Path, sample_bars: DenseBars
    ) -> None:
        events: list[Event] = []
        src = _source(small_model_dir, events)
        _replay(src, sample_bars.until_day(2))
        assert not [e for e in events if isinstance(e, AlertRaised)]
        assert not src.disabled


class TestModelLoading:
    def test_features_when_list_differs_then_refuses_with_clear_error(
        self, small_model_dir: Path, tmp_path: Path
    ) -> None:
        # Arrange
        for name in (METADATA_FILE, MODEL_FILE):
            (tmp_path / name).write_bytes((small_model_dir / name).read_bytes())
        names = list(FEATURE_NAMES)
        names[3], names[4] = names[4], names[3]
        (tmp_path / "features.json").write_text(json.dumps(names))
        # Act / Assert
        with pytest.raises(ConfigError, match=r"first difference at position 3"):
            load_model_dir(tmp_path / MODEL_FILE)

    def test_metadata_when_feature_version_old_then_refuses(
        self, small_model_dir: Path, tmp_path: Path
    ) -> None:
        for name in ("features.json", MODEL_FILE):
            (tmp_path / name).write_bytes((small_model_dir / name).read_bytes())
        meta = json.loads((small_model_dir / METADATA_FILE).read_text())
        meta["feature_version"] = 0
        (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
        with pytest.raises(ConfigError, match="retrain"):
            load_model_dir(tmp_path / MODEL_FILE)

    def test_booster_when_trained_on_other_features_then_refuses(
        self, small_model_dir: Path, tmp_path: Path
    ) -> None:
        for name in (METADATA_FILE, "features.json"):
            (tmp_path / name).write_bytes((small_model_dir / name).read_bytes())
        x = np.zeros((10, 3))
        xgb.train({"nthread": 1}, xgb.DMatrix(x, label=np.zeros(10),
                                              feature_names=["a", "b", "c"]),
                  num_boost_round=1).save_model(str(tmp_path / MODEL_FILE))
        with pytest.raises(ConfigError, match=r"signals\.model\.model_path"):
            load_model_dir(tmp_path / MODEL_FILE)

    def test_source_when_no_model_path_then_config_error(self) -> None:
        with pytest.raises(ConfigError, match="model_path"):
            ModelSignalSource(ModelConfig(enabled=True), publish=lambda e: None,
                              clock=ReplayClock())

    def test_loaded_model_when_checked_then_single_thread(self, small_model_dir: Path) -> None:
        loaded: LoadedModel = load_model_dir(small_model_dir / MODEL_FILE)
        cfg = json.loads(loaded.booster.save_config())
        assert cfg["learner"]["generic_param"]["nthread"] == "1"
