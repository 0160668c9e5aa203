"""Train the XGBoost signal model on minute bars: ``tradingd train`` /
``python -m signals.train --bars CSV --out DIR [--horizon N] [--train-until DATE]``.

Label: is the symbol's forward log return over ``horizon`` bars above the cross-sectional
mean at that timestamp (``--label excess``, the default), or above zero
(``--label raw``)? Entry is the close of the feature bar; the exit bar must be in the same
session, so no label spans a night.

Split by time, never shuffled: training days, then validation (the tail of the training
period, for early stopping and the drift reference), then the held-out test period after
``--train-until``. A row is used in a segment only if its label ends inside that segment.
The held-out figures are printed once, after the model is final; nothing is tuned on them.

Deploy mode: without ``--train-until``, or when no day follows it, every day of the range
trains the model (early stopping on its last days) and the held-out report is marked
absent. The model fit for ``--train-until D`` depends only on the data through D: the
symbols are those with a bar on or before D, so a file with later days (a new symbol
included) yields the same trees as the same file cut at D. ``retrain`` is the after-close
path of a running daemon: deploy-mode training through the day just closed, the model
swapped only if its features match the running code's.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from kernel.model import FloatArray
from signals.artifacts import FORMAT_VERSION, save_model_dir
from signals.bars import DenseBars, read_bars_csv
from signals.config import ModelConfig
from signals.features import (
    FEATURE_NAMES,
    FEATURE_VERSION,
    SESSION_CLOSE_MINUTE,
    SESSION_OPEN_MINUTE,
    FeatureSet,
    compute_features,
)
from signals.metrics import auc, describe, entropy, hit_rate, long_short, rank_ic
from signals.train_options import add_arguments

log = structlog.get_logger("signals.train")
BoolArray = npt.NDArray[np.bool_]
SESSION_MINUTES = SESSION_CLOSE_MINUTE - SESSION_OPEN_MINUTE
N_PRED_BINS = 10

PARAMS: dict[str, Any] = {
    "objective": "binary:logistic", "eval_metric": ["logloss", "auc"], "eta": 0.05,
    "max_depth": 6, "min_child_weight": 50, "subsample": 0.7, "colsample_bytree": 0.7,
    "lambda": 10.0, "tree_method": "hist", "max_bin": 128, "nthread": 1,
}
SMALL_PARAMS: dict[str, Any] = {**PARAMS, "eta": 0.1, "max_depth": 4, "min_child_weight": 20}


@dataclass(frozen=True, slots=True)
class Segments:
    """Row boundaries of the time split: train ``[0, val)``, validation ``[val, test)``,
    test ``[test, end)`` (test may be empty)."""

    val: int
    test: int
    end: int


def run(args: argparse.Namespace) -> int:
    """Train, write the model directory and print the report. Returns the exit code."""
    started = time.perf_counter()
    bars = read_bars_csv(args.bars)  # symbols are chosen on the training range (train())
    log.info("train.bars_loaded", path=str(args.bars), rows=len(bars),
             symbols=len(bars.symbols), secs=round(time.perf_counter() - started, 2))
    try:
        metadata, booster = train(bars, args)
    except ValueError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2
    metadata["elapsed_secs"] = round(time.perf_counter() - started, 2)
    save_model_dir(args.out, booster, metadata)
    print(format_report(metadata))
    print(f"model written to {args.out} in {metadata['elapsed_secs']:.1f} s")
    return 0


def train(bars: DenseBars, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Fit the model on ``bars``; returns (metadata, booster trimmed to the best round)."""
    import xgboost as xgb

    gates = ModelConfig()
    bars = fit_universe(bars, args.train_until, getattr(args, "first_symbols", None))
    t0 = time.perf_counter()
    fs = compute_features(bars, dtype=np.float32)
    feature_secs = time.perf_counter() - t0
    fwd = forward_returns(bars, args.horizon)
    usable = usable_cells(fs, fwd, args.horizon, gates.max_gap_bars)
    target = fwd - _row_mean(fwd, usable) if args.label == "excess" else fwd
    usable &= target != 0  # a tie says nothing about direction
    seg = split_rows(bars, args.train_until, args.val_fraction)
    masks = segment_masks(usable, seg, args.horizon)
    if masks["train"].sum() < 100 or masks["validation"].sum() < 20:
        raise ValueError(f"too little data to train: {int(masks['train'].sum())} training "
                         f"and {int(masks['validation'].sum())} validation rows")
    params = {**(SMALL_PARAMS if args.small else PARAMS), "seed": args.seed}
    rounds = args.max_rounds or (60 if args.small else 600)
    dtrain, dval = (xgb.DMatrix(fs.values[masks[k]], label=target[masks[k]] > 0,
                                feature_names=list(FEATURE_NAMES), nthread=1)
                    for k in ("train", "validation"))
    t1 = time.perf_counter()
    booster = xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dval, "validation")],
                        early_stopping_rounds=_early_stop(args) or None, verbose_eval=False)
    fit_secs = time.perf_counter() - t1
    best = int(getattr(booster, "best_iteration", rounds - 1))
    booster = booster[: best + 1]
    score = np.full(usable.shape, np.nan)
    for k in ("train", "validation", "test"):
        if masks[k].any():
            score[masks[k]] = booster.inplace_predict(fs.values[masks[k]])
    report = {k: evaluate(score, target, fwd, masks[k], fs=fs, horizon=args.horizon)
              for k in ("train", "validation", "test")}
    deploy = seg.test >= seg.end
    if deploy:
        report["test"] = {"rows": 0, "absent": "deploy mode: no day after the training range"}
    meta = {
        "mode": "deploy" if deploy else "evaluate",
        "format": FORMAT_VERSION, "feature_names": list(FEATURE_NAMES),
        "feature_version": FEATURE_VERSION,
        "created_by": "signals.train", "xgboost_version": xgb.__version__,
        "symbols": list(bars.symbols), "horizon": args.horizon, "label": args.label,
        "bars": str(args.bars), "ranges": _ranges(bars, seg),
        "params": params, "num_boost_round": rounds, "best_iteration": best,
        "best_score": float(booster.attr("best_score") or "nan"),
        "gates_at_training": {"max_gap_bars": gates.max_gap_bars},
        "feature_stats": _feature_stats(fs.values[masks["train"]]),
        "prediction": prediction_reference(score, masks),
        "report": report,
        "timing_secs": {"features": round(feature_secs, 2), "fit": round(fit_secs, 2)},
    }
    log.info("train.fitted", best_iteration=best, fit_secs=round(fit_secs, 2),
             rows={k: int(v.sum()) for k, v in masks.items()})
    return meta, booster


def _early_stop(args: argparse.Namespace) -> int:
    if args.early_stop is not None:
        return int(args.early_stop)
    return 15 if args.small else 50


def forward_returns(bars: DenseBars, horizon: int) -> FloatArray:
    """``log(close[t + h] / close[t])`` where the row ``t + h`` is exactly ``h`` bars later
    (same session, no missing minute); NaN otherwise."""
    t_len = len(bars)
    fwd = np.full(bars.close.shape, np.nan)
    if t_len <= horizon:
        return fwd
    step = np.int64(60_000_000_000) * horizon
    same = (bars.ts_ns[horizon:] - bars.ts_ns[:-horizon]) == step
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.log(bars.close[horizon:] / bars.close[:-horizon])
    fwd[:-horizon] = np.where(same[:, None], r, np.nan)
    return fwd


def usable_cells(fs: FeatureSet, fwd: FloatArray, horizon: int, max_gaps: int) -> BoolArray:
    """Cells that the live gates would let through and that have a label: regular
    session, bar present, warm, few gaps, all features finite."""
    minute = fs.minute_of_session[:, None]
    regular = (minute >= 0) & (minute + horizon < SESSION_MINUTES)
    ok: BoolArray = (fs.present & fs.warm & (fs.gaps <= max_gaps) & regular
                     & np.isfinite(fwd) & np.isfinite(fs.values).all(axis=2))
    return ok


def _row_mean(x: FloatArray, mask: BoolArray) -> FloatArray:
    n = mask.sum(axis=1, keepdims=True)
    total = np.where(mask, x, 0.0).sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: FloatArray = total / n
    return out


def fit_universe(bars: DenseBars, train_until: date | None,
                 first_symbols: int | None = None) -> DenseBars:
    """The symbols a model is fit on: those with a bar on or before ``train_until`` (every
    one without it), the first ``first_symbols`` of them alphabetically. A later day can
    then neither add a training row nor move one."""
    names = list(bars.symbols)
    if train_until is not None:
        stop = int(np.searchsorted(_ordinals(bars), train_until.toordinal(), side="right"))
        if stop == 0:
            raise ValueError(f"no data on or before --train-until {train_until}")
        seen = np.flatnonzero(np.isfinite(bars.close[:stop]).sum(axis=0))
        names = [bars.symbols[i] for i in seen.tolist()]
    if first_symbols is not None:
        names = names[:first_symbols]
    return bars if names == list(bars.symbols) else bars.select(names)


def _ordinals(bars: DenseBars) -> npt.NDArray[np.int64]:
    days = bars.ny_dates()
    return np.fromiter((d.toordinal() for d in days), dtype=np.int64, count=len(days))


def split_rows(bars: DenseBars, train_until: date | None, val_fraction: float) -> Segments:
    """Time split on whole days when there are at least 5, else on rows. The test segment
    is the days after ``train_until``; empty (deploy mode) without it or without them."""
    days = bars.ny_dates()
    ords = _ordinals(bars)
    uniq = sorted(set(days))
    end = len(bars)

    def first_row_of(d: date, side: str = "left") -> int:
        return int(np.searchsorted(ords, d.toordinal(), side="right" if side == "right"
                                   else "left"))

    # Deploy mode (no held-out rows) unless days follow ``train_until``.
    test = end if train_until is None else first_row_of(train_until, side="right")
    if test == 0 or not uniq:
        raise ValueError(f"no data on or before --train-until {train_until}")
    train_days = sorted(set(days[:test]))
    if len(train_days) >= 5:
        val = first_row_of(train_days[len(train_days) - max(1, round(val_fraction
                                                                     * len(train_days)))])
    else:
        val = int(test * (1 - val_fraction))
    return Segments(val=val, test=test, end=end)


def segment_masks(usable: BoolArray, seg: Segments, horizon: int) -> dict[str, BoolArray]:
    """Usable cells of each segment whose label ends inside the segment (an embargo)."""
    rows = np.arange(usable.shape[0])[:, None]
    out = {}
    for name, (a, b) in (("train", (0, seg.val)), ("validation", (seg.val, seg.test)),
                         ("test", (seg.test, seg.end))):
        out[name] = usable & (rows >= a) & (rows + horizon < b)
    return out


def evaluate(score: FloatArray, target: FloatArray, fwd: FloatArray, mask: BoolArray,
             *, fs: FeatureSet, horizon: int) -> dict[str, Any]:
    """AUC, hit rate, rank IC and naive long-short on the cells of ``mask``."""
    if not mask.any():
        return {"rows": 0}
    y = target[mask] > 0
    p = score[mask]
    # Rebalance every ``horizon`` minutes from the open: holding periods never overlap.
    step = fs.minute_of_session % horizon == 0
    rows = np.flatnonzero(mask.any(axis=1) & step)
    return {
        "rows": int(mask.sum()), "timestamps": int(mask.any(axis=1).sum()),
        "up_share": float(y.mean()), "auc": auc(y, p), "hit_rate": hit_rate(y, p),
        "rank_ic": rank_ic(score, fwd, mask),
        # Every-minute ICs share 14 of 15 label minutes: their t-stat is overstated.
        "rank_ic_nonoverlap": rank_ic(score, fwd, mask & step[:, None]),
        "long_short": long_short(score, fwd, mask, rows),
    }


def prediction_reference(score: FloatArray, masks: dict[str, BoolArray]) -> dict[str, Any]:
    """Decile bins of the validation predictions: the drift monitor's reference."""
    val = score[masks["validation"]]
    edges = np.unique(np.quantile(val, np.linspace(0, 1, N_PRED_BINS + 1)[1:-1]))
    hist = np.bincount(np.searchsorted(edges, val, side="right"), minlength=len(edges) + 1)
    spread = float(np.quantile(np.abs(2 * val - 1), 0.99))
    return {
        "bin_edges": edges.tolist(), "validation_hist": hist.tolist(),
        "validation_entropy": entropy(hist.astype(float)),
        "strength_scale": 1.0 / spread if spread > 0 else 1.0,
        "train": describe(score[masks["train"]]), "validation": describe(val),
    }


def _feature_stats(x: npt.NDArray[np.floating]) -> dict[str, dict[str, Any]]:
    x64 = x.astype(np.float64)
    return {name: describe(x64[:, j]) for j, name in enumerate(FEATURE_NAMES)}


def _ranges(bars: DenseBars, seg: Segments) -> dict[str, list[str] | None]:
    days = bars.ny_dates()

    def span(a: int, b: int) -> list[str] | None:
        return [str(days[a]), str(days[b - 1])] if b > a else None

    return {"train": span(0, seg.val), "validation": span(seg.val, seg.test),
            "test": span(seg.test, seg.end)}


def format_report(meta: dict[str, Any]) -> str:
    """The human-readable training report."""
    lines = [f"features: {len(meta['feature_names'])}  symbols: {len(meta['symbols'])}  "
             f"horizon: {meta['horizon']} bars  label: {meta['label']}  "
             f"trees: {meta['best_iteration'] + 1} (best of {meta['num_boost_round']})"]
    for seg, rng in meta["ranges"].items():
        lines.append(f"  {seg:<10} {rng[0] + ' .. ' + rng[1] if rng else '(empty)'}")
    lines.append(f"{'segment':<11}{'rows':>9}{'AUC':>8}{'hit':>8}{'IC':>9}{'IC t*':>7}"
                 f"{'L/S bps':>9}{'L/S t':>7}{'L/S n':>7}")
    for seg in ("train", "validation", "test"):
        r = meta["report"][seg]
        if r.get("absent"):
            lines.append(f"{seg:<11}{'absent':>9}  ({r['absent']})")
            continue
        if not r.get("rows"):
            lines.append(f"{seg:<11}{0:>9}")
            continue
        ic, ic_t, ls = r["rank_ic"], r["rank_ic_nonoverlap"]["t_stat"], r["long_short"]
        lines.append(f"{seg:<11}{r['rows']:>9}{r['auc']:>8.4f}{r['hit_rate']:>8.4f}"
                     f"{ic['mean_ic']:>9.4f}{ic_t:>7.1f}"
                     f"{ls['mean_ret'] * 1e4:>9.2f}{ls['t_stat']:>7.1f}{int(ls['n']):>7}")
    lines.append("held-out = test. IC: mean per-minute Spearman rank IC; IC t*: t-stat of "
                 "the ICs at non-overlapping horizon steps only.\nL/S: top minus bottom "
                 "quintile, equal weight, mean log return per horizon step, same steps, "
                 "before costs")
    return "\n".join(lines)


# -- after the close: retrain a running daemon's model ------------------------------------


@dataclass(frozen=True, slots=True)
class RetrainOutcome:
    """What ``retrain`` did: ``swapped`` means ``model_path`` is the model to load now;
    otherwise the running model stays and ``reason`` says why."""

    swapped: bool
    reason: str
    model_path: Path | None = None
    metadata: dict[str, Any] | None = None


def training_args(**overrides: Any) -> argparse.Namespace:
    """The ``train`` command's options with their defaults (``bars`` and ``out`` unset)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--bars", "-", "--out", "-"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def retrain(bars: DenseBars, *, through: date, out_dir: Path,
            running_feature_version: int = FEATURE_VERSION, **options: Any) -> RetrainOutcome:
    """Deploy-mode training on ``bars`` through ``through`` (the session just closed; later
    rows are ignored) into ``out_dir/model-<through>``, written whole before it is named.

    The new model is offered for a swap only when its features are those the running
    feature pipeline computes (``running_feature_version`` and ``FEATURE_NAMES``); a
    model that would not load, or too little data, leaves the running model in place.
    ``options`` are ``train`` options (``small``, ``horizon``, ``seed``, ...).
    """
    from signals.artifacts import MODEL_FILE, load_model_dir

    args = training_args(train_until=through, out=out_dir, **options)
    try:
        meta, booster = train(bars, args)
    except ValueError as exc:
        log.warning("train.retrain_skipped", through=str(through), reason=str(exc))
        return RetrainOutcome(False, f"not trained: {exc}")
    final = out_dir / f"model-{through.isoformat()}"
    staging = out_dir / f".model-{through.isoformat()}.tmp"
    save_model_dir(staging, booster, meta)
    if final.exists():
        import shutil

        shutil.rmtree(final)
    staging.rename(final)
    if meta["feature_version"] != running_feature_version:
        reason = (f"feature_version {meta['feature_version']} differs from the running "
                  f"{running_feature_version}: not swapped")
        log.warning("train.retrain_not_swapped", through=str(through), reason=reason)
        return RetrainOutcome(False, reason, final / MODEL_FILE, meta)
    try:
        load_model_dir(final / MODEL_FILE)
    except Exception as exc:  # a model that does not load must never replace one that does
        log.warning("train.retrain_not_swapped", through=str(through), reason=repr(exc))
        return RetrainOutcome(False, f"does not load: {exc}", final / MODEL_FILE, meta)
    log.info("train.retrained", through=str(through), path=str(final / MODEL_FILE),
             best_iteration=meta["best_iteration"], ranges=meta["ranges"])
    return RetrainOutcome(True, "trained through the close", final / MODEL_FILE, meta)


def main(argv: list[str] | None = None) -> int:
    """``python -m signals.train``."""
    parser = argparse.ArgumentParser(prog="signals.train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
