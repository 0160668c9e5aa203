"""Per-symbol, per-bar features from OHLCV, one implementation for training and live.

``FeatureEngine`` is a state machine over the cross-section: it keeps, per symbol,
sliding windows of the last ``WINDOW`` bars (arrays of shape ``[n_symbols, WINDOW]``,
shifted per symbol only when that symbol has a bar), MACD EMAs and session
accumulators, and turns each new timestamp's bars into one feature row per symbol.
Everything is vectorised across symbols; there is no per-symbol Python loop.

The batch path (``compute_features``) runs the very same state machine over a whole
history, so training and live features agree by construction and nothing can look
ahead: row ``t`` is computed before row ``t + 1`` is seen.

Missing or invalid bars (NaN, non-positive prices, high below low) leave a symbol's
state untouched; the frame reports it as not present, counts consecutive absences
(``stale_bars``) and absences in the last ``gap_window`` batches (``gaps``). A batch that
comes more than one bar interval after the previous one in the same session counts as
missed bars for every symbol.

``FEATURE_NAMES`` is the ordered contract with the model; ``FEATURE_VERSION`` changes
whenever a formula changes without a name changing, so old models refuse to load.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from kernel.events import BarBatch
from kernel.model import FloatArray
from signals.bars import NEW_YORK, DenseBars

WINDOW = 60  # longest lookback, in bars
WARMUP_BARS = WINDOW + 1  # closes needed for a 60-bar return
SESSION_OPEN_MINUTE = 9 * 60 + 30
SESSION_CLOSE_MINUTE = 16 * 60

RET_WINDOWS = (1, 2, 5, 10, 15, 30, 60)
RV_WINDOWS = (5, 15, 30, 60)
RANKED = ("ret_5", "ret_30", "rv_30", "vol_z_30", "vwap_dist_session", "ret_session",
          "rsi_14")

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{k}" for k in RET_WINDOWS),
    *(f"rv_{k}" for k in RV_WINDOWS),
    "rv_ratio_5_60", "range_1", "range_mean_15", "parkinson_30",
    "clv_1", "stoch_30", "stoch_60", "rsi_14", "rsi_30",
    "macd", "macd_signal", "macd_hist",
    "vol_z_30", "vol_z_60", "vol_ratio_15", "flow_15",
    "vwap_dist_session", "vwap_dist_30",
    "sma_dist_10", "sma_dist_30", "sma_dist_60", "sma_slope_10_30", "boll_z_20",
    "minute_of_session", "ret_session", "dist_session_high", "dist_session_low",
    "autocorr_30", "amihud_30", "maxabs_ret_15",
    "mkt_ret_1", "mkt_ret_15", "rel_ret_15",
    *(f"rank_{n}" for n in RANKED),
)
N_FEATURES = len(FEATURE_NAMES)
FEATURE_VERSION = 1

# Per-bar series kept in one [series, symbol, bar] window (each bar's values are computed
# once, when it arrives), plus the close-centred series recomputed every bar.
_STORED = ("r", "r2", "rpos", "rng", "lnhl2", "lv", "lv2", "v", "sv", "tpv", "ill")
_SERIES = (*_STORED, "cd", "cd2")
_S = {name: i for i, name in enumerate(_SERIES)}
_SUM_WINDOWS = (5, 10, 14, 15, 20, 30, 60)
_K = {k: j for j, k in enumerate(_SUM_WINDOWS)}
# Trailing-window sums as one small matrix product: much faster than cumsum here.
_SUM_MATRIX = np.zeros((WINDOW, len(_SUM_WINDOWS)))
for _j, _k in enumerate(_SUM_WINDOWS):
    _SUM_MATRIX[-_k:, _j] = 1.0
_EMA_FAST, _EMA_SLOW, _EMA_SIGNAL = 2 / 13, 2 / 27, 2 / 10
_COL = {name: j for j, name in enumerate(FEATURE_NAMES)}
_RET_LAGS = np.array([-1 - k for k in RET_WINDOWS])
_RV_IX, _RV_K = [_K[k] for k in RV_WINDOWS], np.array(RV_WINDOWS, dtype=np.float64)
_RSI_IX = [_K[14], _K[30]]
_VOLZ_IX, _VOLZ_K = [_K[30], _K[60]], np.array([30.0, 60.0])
_RANKED_IX = [_COL[name] for name in RANKED]
_Sums = Callable[[str, int], FloatArray]  # trailing-window sum of a named series


@dataclass(frozen=True, slots=True)
class FeatureFrame:
    """Features of one timestamp: ``values[i, j]`` is feature ``FEATURE_NAMES[j]`` of
    symbol ``i``; the masks say which rows can be trusted.

    ``present``: a valid bar arrived for the symbol at ``ts``. ``invalid``: a bar arrived
    but was rejected (NaN, non-positive, high < low). ``warm``: enough history for every
    window. ``stale_bars``: consecutive bars missed. ``gaps``: bars missed in the last
    ``gap_window`` bars. ``close``: each symbol's latest close (this bar's when present).
    """

    ts: datetime
    values: FloatArray
    close: FloatArray
    present: npt.NDArray[np.bool_]
    invalid: npt.NDArray[np.bool_]
    warm: npt.NDArray[np.bool_]
    stale_bars: npt.NDArray[np.int64]
    gaps: npt.NDArray[np.int64]
    minute_of_session: int


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """A whole history's features: ``values[t, i, j]`` plus the per-row masks."""

    ts_ns: npt.NDArray[np.int64]
    symbols: tuple[str, ...]
    values: npt.NDArray[np.floating]
    present: npt.NDArray[np.bool_]
    warm: npt.NDArray[np.bool_]
    stale_bars: npt.NDArray[np.int64]
    gaps: npt.NDArray[np.int64]
    minute_of_session: npt.NDArray[np.int64]


class FeatureEngine:
    """Incremental features for a fixed universe of symbols.

    Args:
        symbols: the universe; cross-sectional features rank across it.
        bar_seconds: the bar interval, to detect batches skipped by the feed.
        gap_window: how many recent bars ``gaps`` counts over.
    """

    def __init__(self, symbols: Sequence[str], *, bar_seconds: int = 60,
                 gap_window: int = 30) -> None:
        n = len(symbols)
        self.symbols = tuple(symbols)
        self.bar_seconds = bar_seconds
        self.unknown_symbols: set[str] = set()
        self._pos = {s: i for i, s in enumerate(self.symbols)}
        self._index_cache: dict[tuple[str, ...], tuple[npt.NDArray[np.intp], bool]] = {}
        self._lc = np.full((n, WINDOW + 1), np.nan)  # log close
        self._c, self._h, self._l = (np.full((n, WINDOW), np.nan) for _ in range(3))
        self._ser = np.full((len(_STORED), n, WINDOW), np.nan)
        self._ema = np.full((3, n), np.nan)  # fast, slow, signal(of macd)
        self._sday = np.full(n, -1, dtype=np.int64)
        # open, high, low, sum(tp*v), sum(v), sum(close), count
        self._sess = np.zeros((7, n))
        self._n_bars = np.zeros(n, dtype=np.int64)
        self._stale = np.zeros(n, dtype=np.int64)
        self._miss = np.zeros((n, gap_window), dtype=np.bool_)
        self._miss_ptr = 0
        self._gaps = np.zeros(n, dtype=np.int64)
        self.last_ts: datetime | None = None
        self._last_day = -1

    # -- input ---------------------------------------------------------------------------

    def update(self, batch: BarBatch) -> FeatureFrame:
        """Apply one ``BarBatch`` (any subset and order of the universe's symbols)."""
        ix, all_known = self._index(batch.symbols)
        n = len(self.symbols)
        arrays = []
        for src in (batch.open, batch.high, batch.low, batch.close, batch.volume):
            a = np.full(n, np.nan)
            if all_known:
                a[ix] = src
            else:
                known = ix >= 0
                a[ix[known]] = src[known]
            arrays.append(a)
        o, h, lo, c, v = arrays
        return self.update_arrays(batch.ts, o=o, h=h, lo=lo, c=c, v=v)

    def _index(self, symbols: tuple[str, ...]) -> tuple[npt.NDArray[np.intp], bool]:
        hit = self._index_cache.get(symbols)
        if hit is None:
            ix = np.fromiter((self._pos.get(s, -1) for s in symbols), np.intp, len(symbols))
            self.unknown_symbols.update(s for s in symbols if s not in self._pos)
            hit = (ix, bool((ix >= 0).all()))
            if len(self._index_cache) > 64:  # bounded: live feeds vary the subset
                self._index_cache.clear()
            self._index_cache[symbols] = hit
        return hit

    def update_arrays(self, ts: datetime, *, o: FloatArray, h: FloatArray, lo: FloatArray,
                      c: FloatArray, v: FloatArray) -> FeatureFrame:
        """Apply one timestamp's bars given as arrays aligned with ``symbols``
        (NaN = no bar) and return the features as of the end of that bar."""
        with np.errstate(invalid="ignore"):
            ok = (np.isfinite(o) & np.isfinite(h) & np.isfinite(lo) & np.isfinite(c)
                  & np.isfinite(v) & (lo > 0) & (h >= np.maximum(o, c))
                  & (lo <= np.minimum(o, c)) & (v >= 0))
        invalid = ~ok & np.isfinite(c)
        local = ts.astimezone(NEW_YORK)
        day = local.toordinal()
        minute = local.hour * 60 + local.minute - SESSION_OPEN_MINUTE
        self._track_gaps(ts, day, ok)
        self._push(ok, h, lo, c, v)
        self._update_ema(ok, c)
        self._update_session(ok, day, o=o, h=h, lo=lo, c=c, v=v)
        self._n_bars += ok
        values = self._compute(ok, minute)
        self.last_ts, self._last_day = ts, day
        return FeatureFrame(
            ts=ts, values=values, close=self._c[:, -1].copy(), present=ok, invalid=invalid,
            warm=self._n_bars >= WARMUP_BARS, stale_bars=self._stale.copy(),
            gaps=self._gaps.copy(), minute_of_session=minute,
        )

    def warm_symbols(self) -> npt.NDArray[np.bool_]:
        """Which symbols have enough history for every window."""
        warm: npt.NDArray[np.bool_] = self._n_bars >= WARMUP_BARS
        return warm

    # -- state ---------------------------------------------------------------------------

    def _track_gaps(self, ts: datetime, day: int, ok: npt.NDArray[np.bool_]) -> None:
        if self.last_ts is not None and day == self._last_day:
            missed = round((ts - self.last_ts).total_seconds() / self.bar_seconds) - 1
            if missed > 0:  # the feed skipped whole bars: every symbol missed them
                all_missing = np.ones(len(self.symbols), dtype=np.bool_)
                for _ in range(min(missed, self._miss.shape[1])):
                    self._push_miss(all_missing)
                self._stale += missed
        missing = ~ok
        self._push_miss(missing)
        self._stale = np.where(ok, 0, self._stale + 1)

    def _push_miss(self, missing: npt.NDArray[np.bool_]) -> None:
        p = self._miss_ptr
        self._gaps += missing.astype(np.int64) - self._miss[:, p]
        self._miss[:, p] = missing
        self._miss_ptr = (p + 1) % self._miss.shape[1]

    def _push(self, ok: npt.NDArray[np.bool_], h: FloatArray, lo: FloatArray, c: FloatArray,
              v: FloatArray) -> None:
        rows: slice | npt.NDArray[np.intp] = slice(None) if ok.all() else np.flatnonzero(ok)
        with np.errstate(invalid="ignore", divide="ignore"):  # rejected rows are not used
            log_c = np.log(c)
            r = log_c - self._lc[:, -1]
            lv = np.log1p(v)
            new = np.stack((r, r * r, np.maximum(r, 0.0), (h - lo) / c, np.log(h / lo) ** 2,
                            lv, lv * lv, v, np.sign(r) * v, (h + lo + c) / 3 * v,
                            np.abs(r) / np.maximum(c * v, 1.0)))
        for buf, col in ((self._lc, log_c), (self._c, c), (self._h, h), (self._l, lo)):
            buf[rows, :-1] = buf[rows, 1:]
            buf[rows, -1] = col[rows]
        self._ser[:, rows, :-1] = self._ser[:, rows, 1:]
        self._ser[:, rows, -1] = new[:, rows]

    def _update_ema(self, ok: npt.NDArray[np.bool_], c: FloatArray) -> None:
        e = self._ema
        first = ok & np.isnan(e[0])
        if ok.all() and not first.any():  # the usual bar: same arithmetic, fewer calls
            e[0] += _EMA_FAST * (c - e[0])
            e[1] += _EMA_SLOW * (c - e[1])
            e[2] += _EMA_SIGNAL * ((e[0] - e[1]) / c - e[2])
            return
        e[0] = np.where(first, c, e[0])
        e[1] = np.where(first, c, e[1])
        e[2] = np.where(first, 0.0, e[2])
        e[0] = np.where(ok, e[0] + _EMA_FAST * (c - e[0]), e[0])
        e[1] = np.where(ok, e[1] + _EMA_SLOW * (c - e[1]), e[1])
        macd = (e[0] - e[1]) / self._c[:, -1]
        e[2] = np.where(ok, e[2] + _EMA_SIGNAL * (macd - e[2]), e[2])

    def _update_session(self, ok: npt.NDArray[np.bool_], day: int, *, o: FloatArray,
                        h: FloatArray, lo: FloatArray, c: FloatArray, v: FloatArray) -> None:
        s = self._sess
        new = ok & (self._sday != day)
        tpv = (h + lo + c) / 3 * v
        if ok.all() and not new.any():  # the usual bar: same arithmetic, fewer calls
            s[3] += tpv
            s[4] += v
            s[5] += c
            s[6] += 1.0
            s[1] = np.fmax(s[1], h)
            s[2] = np.fmin(s[2], lo)
            return
        self._sday = np.where(new, day, self._sday)
        for k, reset, add in ((0, o, None), (3, tpv, tpv), (4, v, v), (5, c, c),
                              (6, 1.0, 1.0)):
            s[k] = np.where(new, reset, s[k])
            if add is not None:
                s[k] = np.where(ok & ~new, s[k] + add, s[k])
        s[1] = np.where(new, h, np.where(ok, np.fmax(s[1], h), s[1]))
        s[2] = np.where(new, lo, np.where(ok, np.fmin(s[2], lo), s[2]))

    # -- features ------------------------------------------------------------------------

    def _compute(self, ok: npt.NDArray[np.bool_], minute: int) -> FloatArray:
        out = np.empty((len(self.symbols), N_FEATURES))
        with np.errstate(divide="ignore", invalid="ignore"):
            self._single_symbol(out, minute)
            self._cross_section(out, ok & (self._n_bars >= WARMUP_BARS))
        return out

    def _window_sums(self) -> tuple[FloatArray, FloatArray]:
        """Trailing sums ``S[series, symbol, _K[k]]`` over the last k bars, and returns.

        A NaN anywhere in a symbol's buffer (only before it is warm) makes all its sums
        NaN, which is harmless: such rows are gated by ``warm``."""
        n = len(self.symbols)
        cd = self._c - self._c[:, -1:]  # centred on the last close: no cancellation
        stored = (self._ser.reshape(-1, WINDOW) @ _SUM_MATRIX).reshape(len(_STORED), n, -1)
        centred = (np.stack((cd, cd * cd)).reshape(-1, WINDOW) @ _SUM_MATRIX).reshape(2, n, -1)
        return np.concatenate((stored, centred)), self._ser[_S["r"]]

    def _single_symbol(self, out: FloatArray, minute: int) -> None:
        sums, r = self._window_sums()

        def s(name: str, k: int) -> FloatArray:
            return sums[_S[name], :, _K[k]]

        def put(name: str, value: FloatArray | float) -> None:
            out[:, _COL[name]] = value

        lc, h, lo, sess = self._lc, self._h, self._l, self._sess
        c = self._c[:, -1]
        # Windows of one kind side by side: one numpy call per block, not per window.
        out[:, _COL["ret_1"]:_COL["ret_1"] + len(RET_WINDOWS)] = lc[:, -1:] - lc[:, _RET_LAGS]
        s1, s2 = sums[_S["r"]][:, _RV_IX], sums[_S["r2"]][:, _RV_IX]
        rv = np.sqrt(np.maximum((s2 - s1 * s1 / _RV_K) / (_RV_K - 1), 0.0))
        out[:, _COL["rv_5"]:_COL["rv_5"] + len(RV_WINDOWS)] = rv
        put("rv_ratio_5_60", _ratio(rv[:, 0], rv[:, -1], 1.0))
        put("range_1", (h[:, -1] - lo[:, -1]) / c)
        put("range_mean_15", s("rng", 15) / 15)
        put("parkinson_30", np.sqrt(s("lnhl2", 30) / 30 / (4 * np.log(2))))
        put("clv_1", _ratio(c - lo[:, -1], h[:, -1] - lo[:, -1], 0.5))
        for k in (30, 60):
            lo_k, hi_k = lo[:, -k:].min(axis=1), h[:, -k:].max(axis=1)
            put(f"stoch_{k}", _ratio(c - lo_k, hi_k - lo_k, 0.5))
        up = sums[_S["rpos"]][:, _RSI_IX]
        down = np.maximum(up - sums[_S["r"]][:, _RSI_IX], 0.0)
        out[:, _COL["rsi_14"]:_COL["rsi_14"] + 2] = _ratio(up, up + down, 0.5)
        macd = (self._ema[0] - self._ema[1]) / c
        put("macd", macd)
        put("macd_signal", self._ema[2])
        put("macd_hist", macd - self._ema[2])
        m = sums[_S["lv"]][:, _VOLZ_IX] / _VOLZ_K
        sd = np.sqrt(np.maximum(sums[_S["lv2"]][:, _VOLZ_IX] / _VOLZ_K - m * m, 0.0))
        lv_now = self._ser[_S["lv"], :, -1:]
        out[:, _COL["vol_z_30"]:_COL["vol_z_30"] + 2] = _ratio(lv_now - m, sd, 0.0)
        put("vol_ratio_15", _ratio(self._ser[_S["v"], :, -1], s("v", 15) / 15, 1.0))
        put("flow_15", _ratio(s("sv", 15), s("v", 15), 0.0))
        self._price_levels(out, s, c)
        put("minute_of_session", float(minute))
        out[:, _COL["ret_session"]:_COL["ret_session"] + 3] = np.log(c[:, None] / sess[:3].T)
        put("autocorr_30", _autocorr(r[:, -30:], r[:, -31:-1]))
        put("amihud_30", np.log1p(s("ill", 30) / 30 * 1e9))
        put("maxabs_ret_15", np.abs(r[:, -15:]).max(axis=1))

    def _price_levels(self, out: FloatArray, s: _Sums, c: FloatArray) -> None:
        sma = {k: c + s("cd", k) / k for k in (10, 20, 30, 60)}
        for k in (10, 30, 60):
            out[:, _COL[f"sma_dist_{k}"]] = np.log(c / sma[k])
        out[:, _COL["sma_slope_10_30"]] = np.log(sma[10] / sma[30])
        m20 = s("cd", 20) / 20
        sd20 = np.sqrt(np.maximum(s("cd2", 20) / 20 - m20 * m20, 0.0))
        out[:, _COL["boll_z_20"]] = _ratio(-m20, sd20, 0.0)
        sess = self._sess
        vwap = np.where(sess[4] > 0, sess[3] / sess[4], sess[5] / sess[6])
        out[:, _COL["vwap_dist_session"]] = np.log(c / vwap)
        v30 = s("v", 30)
        out[:, _COL["vwap_dist_30"]] = np.where(v30 > 0, np.log(c * v30 / s("tpv", 30)),
                                                out[:, _COL["sma_dist_30"]])

    def _cross_section(self, out: FloatArray, part: npt.NDArray[np.bool_]) -> None:
        for k in (1, 15):
            x = out[:, _COL[f"ret_{k}"]]
            use = part & np.isfinite(x)
            out[:, _COL[f"mkt_ret_{k}"]] = x[use].mean() if use.any() else np.nan
        out[:, _COL["rel_ret_15"]] = out[:, _COL["ret_15"]] - out[:, _COL["mkt_ret_15"]]
        ranked = masked_pct_rank(out[:, _RANKED_IX].T, part)
        out[:, _COL["rank_" + RANKED[0]]:_COL["rank_" + RANKED[0]] + len(RANKED)] = ranked.T


def _ratio(num: FloatArray, den: FloatArray, fallback: float) -> FloatArray:
    """``num / den`` where ``den != 0``, else ``fallback`` (flat windows are normal)."""
    return np.where(den != 0, num / den, fallback)


def _autocorr(a: FloatArray, b: FloatArray) -> FloatArray:
    am = a - a.mean(axis=1, keepdims=True)
    bm = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((am * am).sum(axis=1) * (bm * bm).sum(axis=1))
    return _ratio((am * bm).sum(axis=1), den, 0.0)


def average_ranks(x: FloatArray) -> FloatArray:
    """0-based ranks along the last axis (each row of a 2-d array ranked on its own);
    ties get the mean of their ranks, as Spearman's correlation needs."""
    x2 = x.reshape(-1, x.shape[-1])
    k, n = x2.shape
    order = np.argsort(x2, axis=1, kind="stable")
    rows = np.arange(k)[:, None]
    xs = x2[rows, order]
    first = np.ones((k, n), dtype=np.bool_)
    first[:, 1:] = xs[:, 1:] != xs[:, :-1]
    last = np.ones((k, n), dtype=np.bool_)
    last[:, :-1] = first[:, 1:]
    pos = np.arange(n, dtype=np.float64)
    start = np.maximum.accumulate(np.where(first, pos, 0.0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, n - 1.0)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((k, n))
    ranks[rows, order] = (start + end) / 2
    return ranks.reshape(x.shape)


def masked_pct_rank(x: FloatArray, mask: npt.NDArray[np.bool_]) -> FloatArray:
    """Percentile ranks in [0, 1] along the last axis among the columns in ``mask`` (per
    row, among the finite entries); NaN elsewhere. ``x`` is ``[n]`` or ``[k, n]``."""
    rows = x.reshape(-1, x.shape[-1])
    n = rows.shape[1]
    if n > 1 and mask.all() and np.isfinite(rows).all():  # the usual bar
        return (average_ranks(rows) / (n - 1)).reshape(x.shape)
    out = np.full(rows.shape, np.nan)
    sub = rows[:, mask]
    m = sub.shape[1]
    if np.isfinite(sub).all():
        if m:
            out[:, mask] = average_ranks(sub) / (m - 1) if m > 1 else 0.5
        return out.reshape(x.shape)
    for j in range(rows.shape[0]):  # rare: a NaN among warm symbols
        use = mask & np.isfinite(rows[j])
        m = int(use.sum())
        if m:
            out[j, use] = average_ranks(rows[j, use]) / (m - 1) if m > 1 else 0.5
    return out.reshape(x.shape)


def compute_features(bars: DenseBars, *, dtype: type[np.floating] = np.float64,
                     bar_seconds: int = 60, gap_window: int = 30) -> FeatureSet:
    """Features of a whole history by running ``FeatureEngine`` row by row (no look-ahead).

    ``dtype=np.float32`` halves the memory of long histories for training.
    """
    t_len, n = bars.close.shape
    engine = FeatureEngine(bars.symbols, bar_seconds=bar_seconds, gap_window=gap_window)
    values = np.empty((t_len, n, N_FEATURES), dtype=dtype)
    present = np.empty((t_len, n), dtype=np.bool_)
    warm = np.empty((t_len, n), dtype=np.bool_)
    stale = np.empty((t_len, n), dtype=np.int64)
    gaps = np.empty((t_len, n), dtype=np.int64)
    minute = np.empty(t_len, dtype=np.int64)
    for t in range(t_len):
        fr = engine.update_arrays(bars.timestamp(t), o=bars.open[t], h=bars.high[t],
                                  lo=bars.low[t], c=bars.close[t], v=bars.volume[t])
        values[t] = fr.values
        present[t], warm[t], stale[t], gaps[t] = fr.present, fr.warm, fr.stale_bars, fr.gaps
        minute[t] = fr.minute_of_session
    return FeatureSet(bars.ts_ns, bars.symbols, values, present, warm, stale, gaps, minute)
