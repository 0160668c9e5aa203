"""Model signal latency: features + inference per 53-symbol bar batch, and training time.

Real minute bars (the first 53 symbols alphabetically, first 4 trading days) from
``<repo>/../shared/data/market``. A model of exactly 200 trees of depth 6 is trained
(no early stopping); then the bars are replayed and, per batch inside the model's
trading window with all features warm, we time:

* features: ``FeatureEngine.update`` (53 symbols, 51 features);
* predict: one ``Booster.inplace_predict`` on the 53 rows;
* features + predict: the two together (the figure the 2 ms p99 target is about);
* f+p cpu time: process CPU time of features + predict (all threads), which leaves out
  the time the process sat preempted on a busy machine;
* on_bars: ``ModelSignalSource.on_bars`` end to end (features, gates, predict, drift
  monitor, 53 ``Signal`` objects, one ``SignalBatch`` published).

for xgboost nthread 1 and 2. Run: ``python -m benchmarks.model``. The last line printed
is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from kernel.clock import ReplayClock
from kernel.events import Event
from signals.artifacts import LoadedModel
from signals.bars import DenseBars, read_bars_csv
from signals.config import ModelConfig
from signals.features import FEATURE_NAMES, FeatureEngine
from signals.model import ModelSignalSource
from signals.train import train

REPO = Path(__file__).resolve().parents[1]
FREEZE_GC = os.environ.get("BENCH_GC_FREEZE", "1") == "1"
FULL = "us_equities_1min_2018-02-16_2018-04-20.csv.gz"


def market_dir() -> Path:
    for base in (REPO, *REPO.parents):
        if (base / "shared" / "data" / "market").is_dir():
            return base / "shared" / "data" / "market"
    raise FileNotFoundError("shared/data/market not found above the repository")


def fit(bars: DenseBars) -> tuple[LoadedModel, dict[str, float]]:
    args = argparse.Namespace(horizon=15, train_until=None, label="excess", val_fraction=0.2,
                              max_rounds=200, early_stop=0, small=False, seed=0,
                              bars=Path(FULL))
    t0 = time.perf_counter()
    meta, booster = train(bars, args)
    total = time.perf_counter() - t0
    assert booster.num_boosted_rounds() == 200
    timing = {"train_total_s": total, "train_features_s": meta["timing_secs"]["features"],
              "train_fit_s": meta["timing_secs"]["fit"],
              "train_rows": meta["report"]["train"]["rows"]}
    return LoadedModel(booster, meta, Path("<memory>")), timing


def time_features_predict(bars: DenseBars, loaded: LoadedModel, nthread: int) -> dict[str, Any]:
    booster = loaded.booster
    booster.set_param({"nthread": nthread})
    booster.inplace_predict(np.zeros((1, len(FEATURE_NAMES))))  # one-time predictor setup
    engine = FeatureEngine(bars.symbols)
    feat, pred, both, cpu = [], [], [], []
    for batch in bars.batches():
        c0 = time.process_time_ns()
        t0 = time.perf_counter_ns()
        frame = engine.update(batch)
        t1 = time.perf_counter_ns()
        if not (frame.warm.all() and 0 <= frame.minute_of_session < 375):
            continue
        booster.inplace_predict(frame.values)
        t2 = time.perf_counter_ns()
        c1 = time.process_time_ns()
        feat.append(t1 - t0)
        pred.append(t2 - t1)
        both.append(t2 - t0)
        cpu.append(c1 - c0)
    # CPU time of the process (all threads) leaves out time spent preempted by others.
    return {"features": _stats(feat), "predict": _stats(pred), "features+predict": _stats(both),
            "f+p cpu time": _stats(cpu)}


def time_on_bars(bars: DenseBars, loaded: LoadedModel, nthread: int) -> dict[str, Any]:
    events: list[Event] = []
    clock = ReplayClock()
    src = ModelSignalSource(ModelConfig(enabled=True, nthread=nthread), publish=events.append,
                            clock=clock, loaded=loaded)
    times = []
    for batch in bars.batches():
        clock.set(batch.ts)
        n = len(events)
        t0 = time.perf_counter_ns()
        src.on_bars(batch)
        dt = time.perf_counter_ns() - t0
        if len(events) > n:  # a batch that produced signals
            times.append(dt)
    return {"on_bars": _stats(times)}


def _stats(ns: list[int]) -> dict[str, float]:
    us = np.asarray(ns, dtype=np.float64) / 1e3
    return {"n": len(us), "median_us": float(np.median(us)),
            "p99_us": float(np.percentile(us, 99)), "max_us": float(us.max())}


def main() -> int:
    bars = read_bars_csv(market_dir() / FULL, first_symbols=53, days=4)
    loaded, timing = fit(bars)
    results: dict[str, Any] = {"symbols": len(bars.symbols), "trees": 200, "depth": 6,
                               "features": len(loaded.metadata["feature_names"]),
                               "cpus": os.cpu_count(), **timing, "latency": {}}
    replay = bars.slice_rows(0, len(bars))
    if FREEZE_GC:
        # What a long-running daemon should do after start-up: move everything alive now
        # out of the collector's sight, so a full collection does not walk the loaded
        # history (xgboost's wrapper makes reference cycles on every predict call).
        gc.collect()
        gc.freeze()
    results["gc_frozen"] = FREEZE_GC
    for nthread in (1, 2):
        r = time_features_predict(replay, loaded, nthread)
        r.update(time_on_bars(replay, loaded, nthread))
        results["latency"][f"nthread={nthread}"] = r
    loaded.booster.set_param({"nthread": 1})
    print(f"training: {timing['train_rows']} rows x {results['features']} features, "
          f"200 trees depth 6, nthread 1: {timing['train_total_s']:.1f} s "
          f"(features {timing['train_features_s']:.1f} s, fit {timing['train_fit_s']:.1f} s)")
    print(f"per {results['symbols']}-symbol batch (µs)")
    print(f"{'nthread':<9}{'stage':<18}{'n':>6}{'median':>10}{'p99':>10}{'max':>10}")
    for key, stages in results["latency"].items():
        for stage, s in stages.items():
            print(f"{key.split('=')[1]:<9}{stage:<18}{s['n']:>6}{s['median_us']:>10.0f}"
                  f"{s['p99_us']:>10.0f}{s['max_us']:>10.0f}")
    # p99 on a shared box is mostly scheduler preemption: record how busy the box was.
    results["loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(f"gc.freeze() after setup: {FREEZE_GC} (BENCH_GC_FREEZE=0 to turn off)")
    print(f"load average (1 min) during the run: {results['loadavg_1m']} on {os.cpu_count()} CPUs")
    target = results["latency"]["nthread=1"]["features+predict"]["p99_us"]
    results["target_p99_us"] = 2000
    results["target_met"] = target < 2000
    print(f"target p99 < 2000 µs (features + predict, nthread 1): "
          f"{'met' if target < 2000 else 'NOT met'} ({target:.0f} µs)")
    print(json.dumps(results, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
