"""Live XGBoost signals: ``BarBatch`` in, one ``SignalBatch`` (source ``"model"``) out.

Per regular-session batch up to ``horizon`` minutes before the close (the span the
model was trained on): update the features of every symbol at once (``FeatureEngine``), gate them
(``FeatureGate``), score the symbols that pass with ONE ``Booster.inplace_predict`` call,
check the prediction distribution (``DriftMonitor``) and publish one ``SignalBatch``.
Strength is ``clip((2p - 1) * scale, -1, 1)``; the price is the bar's close; ids are
``model:<bar ts iso>:<symbol>``, so a replay produces the same ids.

Events published:
    SignalBatch: once per regular-session batch with at least one unsuppressed symbol.
    AlertRaised: ``model.entropy_collapse`` or ``model.drift`` (severity ``warning`` at
        the alert level, ``critical`` when the model is disabled).

Log events: ``model.loaded``, ``model.suppress`` (symbol, reason, feature, value: when a
symbol's reason changes), ``model.resume`` (symbol), ``model.unknown_symbols``,
``model.out_of_order``, ``model.entropy_collapse``, ``model.drift``, ``model.disabled``.

Once disabled the source drops every batch until the daemon restarts with a model an
operator has checked; the rest of the daemon is unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from kernel.clock import Clock
from kernel.errors import ConfigError
from kernel.events import AlertRaised, BarBatch, Event, SignalBatch
from kernel.model import Signal
from signals.artifacts import LoadedModel, load_model_dir
from signals.config import ModelConfig
from signals.drift import DriftMonitor, DriftStatus, Level
from signals.features import (
    FEATURE_NAMES,
    SESSION_CLOSE_MINUTE,
    SESSION_OPEN_MINUTE,
    FeatureEngine,
    FeatureFrame,
)
from signals.gates import FeatureGate, GateResult, SuppressReason

log = structlog.get_logger("signals.model")
SOURCE = "model"


class ModelSignalSource:
    """Scores every symbol of each bar batch with the trained model.

    Args:
        cfg: the ``signals.model`` section (``enabled`` must be true, ``model_path`` set).
        publish: the bus's ``publish``.
        clock: stamps the signals (``Signal.ts``, ``SignalBatch.ts``).
        loaded: an already loaded model (tests, benchmarks); default: load from ``cfg``.
        engine: a feature engine over the model's symbols (default: a new one).

    Raises:
        ConfigError: no model path, unreadable files, or features that differ from
            ``FEATURE_NAMES``.
    """

    def __init__(self, cfg: ModelConfig, *, publish: Callable[[Event], None], clock: Clock,
                 loaded: LoadedModel | None = None, engine: FeatureEngine | None = None) -> None:
        if loaded is None:
            if cfg.model_path is None:
                raise ConfigError("signals.model.model_path", None,
                                  "a model file (tradingd train --out DIR writes DIR/model.ubj)")
            loaded = load_model_dir(cfg.model_path, cfg.features_path, cfg.metadata_path)
        self.cfg = cfg
        self._publish = publish
        self._clock = clock
        self._booster = loaded.booster
        self._booster.set_param({"nthread": cfg.nthread})
        meta = loaded.metadata
        self.symbols: tuple[str, ...] = tuple(meta["symbols"])
        self.horizon = int(meta["horizon"])
        self.model_path = loaded.model_path
        self.feature_version = meta.get("feature_version")
        self.engine = engine or FeatureEngine(self.symbols, bar_seconds=cfg.bar_seconds,
                                              gap_window=cfg.gap_window_bars)
        if self.engine.symbols != self.symbols:
            raise ConfigError("signals.model", "engine symbols",
                              "a feature engine over the model's training symbols")
        self.gate = FeatureGate(cfg, meta["feature_stats"])
        self.drift = DriftMonitor(cfg, meta["prediction"])
        self.scale = cfg.strength_scale or float(meta["prediction"]["strength_scale"])
        # Training labels need the exit bar in the same session: no signal in the last
        # ``horizon`` minutes (the closing cross would also be out of the training range).
        self._last_minute = SESSION_CLOSE_MINUTE - SESSION_OPEN_MINUTE - int(meta["horizon"])
        self.disabled = False
        self.batches_published = 0
        self._last_reason = np.zeros(len(self.symbols), dtype=np.int8)
        self._alerted: dict[str, Level] = {"model.entropy_collapse": Level.OK,
                                           "model.drift": Level.OK}
        self._unknown_logged: set[str] = set()
        # The first prediction builds xgboost's predictor caches (tens of ms): pay at load.
        self._booster.inplace_predict(np.zeros((1, len(FEATURE_NAMES))))
        log.info("model.loaded", path=str(loaded.model_path), symbols=len(self.symbols),
                 features=len(FEATURE_NAMES), trees=self._booster.num_boosted_rounds(),
                 scale=round(self.scale, 4), nthread=cfg.nthread)

    def prime(self, history: Iterable[BarBatch]) -> int:
        """Feed past bars (e.g. the previous session) through the features only, so live
        signals need not wait ``WARMUP_BARS`` minutes; returns the batches applied."""
        n = 0
        for batch in history:
            last = self.engine.last_ts
            if last is None or batch.ts > last:
                self.engine.update(batch)
                n += 1
        log.info("model.primed", batches=n,
                 warm=int(np.count_nonzero(self.engine.warm_symbols())))
        return n

    def on_bars(self, batch: BarBatch) -> None:
        """Bus handler for ``BarBatch``."""
        if self.disabled:
            return
        last = self.engine.last_ts
        if last is not None and batch.ts <= last:
            log.warning("model.out_of_order", ts=batch.ts.isoformat(), last=last.isoformat())
            return
        frame = self.engine.update(batch)
        self._log_unknown()
        if not 0 <= frame.minute_of_session < self._last_minute:
            return  # outside the minutes the model was trained on
        gate = self.gate.check(frame)
        self._log_suppressions(frame, gate)
        rows = np.flatnonzero(gate.ok)
        if not len(rows):
            return
        p = self._booster.inplace_predict(frame.values[rows])
        status = self.drift.update(p)
        if status is not None:
            self._judge(status, batch)
            if self.disabled:
                return
        self._emit(batch, frame, rows, np.asarray(p, dtype=np.float64))

    def _emit(self, batch: BarBatch, frame: FeatureFrame, rows: npt.NDArray[np.intp],
              p: npt.NDArray[np.float64]) -> None:
        strength = np.clip((2.0 * p - 1.0) * self.scale, -1.0, 1.0).tolist()
        price = frame.close[rows].tolist()
        now = self._clock.now()
        stamp = batch.ts.isoformat()
        syms = self.symbols
        signals = tuple(
            Signal(f"{SOURCE}:{stamp}:{syms[i]}", syms[i], s, c, now, SOURCE)
            for i, s, c in zip(rows.tolist(), strength, price, strict=True)
        )
        self.batches_published += 1
        self._publish(SignalBatch(ts=now, source=SOURCE, signals=signals,
                                  received_ns=batch.received_ns))

    # -- gates and drift -----------------------------------------------------------------

    def _log_suppressions(self, frame: FeatureFrame, gate: GateResult) -> None:
        changed = np.flatnonzero(gate.reason != self._last_reason)
        for i in changed.tolist():  # only symbols whose state changed: usually none
            code = int(gate.reason[i])
            if code == SuppressReason.NONE:
                log.info("model.resume", symbol=self.symbols[i], ts=frame.ts.isoformat())
                continue
            j = int(gate.feature[i])
            # Missing minutes and warm-up are routine; a bad feature value is not.
            emit = log.warning if code >= SuppressReason.FEATURE_NAN else log.info
            emit(
                "model.suppress", symbol=self.symbols[i], reason=SuppressReason(code).name,
                feature=FEATURE_NAMES[j] if j >= 0 else None,
                value=float(frame.values[i, j]) if j >= 0 else None,
                stale_bars=int(frame.stale_bars[i]), gaps=int(frame.gaps[i]),
                ts=frame.ts.isoformat(),
            )
        self._last_reason = gate.reason

    def _judge(self, status: DriftStatus, batch: BarBatch) -> None:
        for name, level in (("model.entropy_collapse", status.entropy_level),
                            ("model.drift", status.psi_level)):
            if level <= self._alerted[name]:
                if level == Level.OK:
                    self._alerted[name] = Level.OK  # re-arm once back to normal
                continue
            self._alerted[name] = level
            detail: dict[str, Any] = status.detail(self.drift.reference_entropy)
            detail["disabled"] = level == Level.DISABLE
            severity = "critical" if level == Level.DISABLE else "warning"
            log.error(name, severity=severity, ts=batch.ts.isoformat(), **detail)
            self._publish(AlertRaised(name=name, severity=severity, ts=self._clock.now(),
                                      detail=detail))
            if level == Level.DISABLE and not self.disabled:
                self.disabled = True
                log.error("model.disabled", reason=name, ts=batch.ts.isoformat(), **detail)

    def _log_unknown(self) -> None:
        new = self.engine.unknown_symbols - self._unknown_logged
        if new:
            self._unknown_logged |= new
            log.warning("model.unknown_symbols", symbols=sorted(new),
                        hint="not in the model's training universe; ignored")

    @property
    def suppressed_counts(self) -> dict[str, int]:
        """How many symbol-bars each reason held back since start."""
        return dict(self.gate.counts)
