"""Evaluation figures computed with numpy only (no scipy/scikit-learn on purpose: they
make ``import xgboost`` several seconds slower when installed).

Scores and forward returns come as ``[T, N]`` grids (timestamps x symbols) with a mask
of usable cells, so cross-sectional figures (rank IC, long-short) are taken per timestamp.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kernel.model import FloatArray
from signals.features import average_ranks

BoolArray = npt.NDArray[np.bool_]


def auc(y: BoolArray, score: FloatArray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores averaged)."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(score) + 1.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def hit_rate(y: BoolArray, p: FloatArray) -> float:
    """Share of rows where the predicted side (p > 0.5) matches the label."""
    return float(np.mean((p > 0.5) == y)) if len(y) else float("nan")


def rank_ic(score: FloatArray, fwd: FloatArray, mask: BoolArray,
            min_names: int = 5) -> dict[str, float]:
    """Spearman rank correlation between score and forward return, per timestamp,
    then averaged over timestamps with at least ``min_names`` usable symbols."""
    ics = []
    for t in np.flatnonzero(mask.sum(axis=1) >= min_names):
        m = mask[t]
        a = average_ranks(score[t, m])
        b = average_ranks(fwd[t, m])
        a, b = a - a.mean(), b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        if den > 0:
            ics.append(float((a * b).sum() / den))
    return _summary(np.asarray(ics), "ic")


def long_short(score: FloatArray, fwd: FloatArray, mask: BoolArray, rows: npt.NDArray[np.intp], *,
               quantile: float = 0.2, min_names: int = 5) -> dict[str, float]:
    """Equal-weighted top-minus-bottom ``quantile`` forward log return at the given rows
    (chosen by the caller so holding periods do not overlap). Before any costs."""
    rets = []
    for t in rows:
        m = mask[t]
        k = int(np.floor(m.sum() * quantile))
        if m.sum() < min_names or k < 1:
            continue
        order = np.argsort(score[t, m], kind="stable")
        f = fwd[t, m]
        rets.append(float(f[order[-k:]].mean() - f[order[:k]].mean()))
    out = _summary(np.asarray(rets), "ret")
    out["total_log_return"] = float(np.sum(rets)) if rets else float("nan")
    return out


def _summary(x: FloatArray, name: str) -> dict[str, float]:
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    t = mean / std * np.sqrt(n) if n > 1 and std > 0 else float("nan")
    return {f"mean_{name}": mean, f"std_{name}": std, "t_stat": float(t), "n": float(n),
            "positive_share": float(np.mean(x > 0)) if n else float("nan")}


def entropy(counts: FloatArray) -> float:
    """Shannon entropy (nats) of a histogram."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def psi(expected: FloatArray, actual: FloatArray, eps: float = 1e-4) -> float:
    """Population stability index between two histograms over the same bins."""
    e = np.maximum(expected / max(expected.sum(), 1e-12), eps)
    a = np.maximum(actual / max(actual.sum(), 1e-12), eps)
    return float(((a - e) * np.log(a / e)).sum())


def describe(x: FloatArray) -> dict[str, Any]:
    """Distribution summary of one feature or of predictions (finite values only)."""
    x = x[np.isfinite(x)]
    if not len(x):
        return {"count": 0}
    q = np.quantile(x, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
    return {
        "count": len(x), "mean": float(x.mean()), "std": float(x.std()),
        "min": float(x.min()), "max": float(x.max()),
        **{f"q{p:02d}": float(v) for p, v in zip((1, 5, 25, 50, 75, 95, 99), q, strict=True)},
    }
