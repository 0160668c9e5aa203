"""Feature engine: batch/live parity, no look-ahead, formulas, gaps and bad bars."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.events import BarBatch
from signals.bars import DenseBars
from signals.features import (
    FEATURE_NAMES,
    WARMUP_BARS,
    FeatureEngine,
    FeatureFrame,
    average_ranks,
    compute_features,
)

TOL = 1e-9


def _col(name: str) -> int:
    return FEATURE_NAMES.index(name)


def _perturbed(bars: DenseBars, after: int, seed: int) -> DenseBars:
    """A copy whose bars after row ``after`` are scaled randomly (prices and volumes)."""
    rng = np.random.default_rng(seed)
    out = []
    for a in (bars.open, bars.high, bars.low, bars.close, bars.volume):
        b = a.copy()
        b[after + 1:] *= rng.uniform(0.5, 1.5, size=b[after + 1:].shape[1])
        out.append(b)
    return DenseBars(bars.ts_ns, bars.symbols, *out)


def _frames_from_batches(bars: DenseBars, shuffle_seed: int) -> list[FeatureFrame]:
    """Feed the history as live ``BarBatch`` events (present symbols, shuffled order)."""
    rng = np.random.default_rng(shuffle_seed)
    engine = FeatureEngine(bars.symbols)
    frames = []
    for batch in bars.batches():
        p = rng.permutation(len(batch.symbols))
        shuffled = BarBatch(
            ts=batch.ts, symbols=tuple(batch.symbols[i] for i in p), open=batch.open[p],
            high=batch.high[p], low=batch.low[p], close=batch.close[p], volume=batch.volume[p],
        )
        frames.append(engine.update(shuffled))
    return frames


class TestFeatureNames:
    def test_names_when_listed_then_unique_and_about_45(self) -> None:
        assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
        assert 40 <= len(FEATURE_NAMES) <= 55


class TestParity:
    @pytest.mark.parametrize("fixture", ["sample_bars", "wide_bars"])
    def test_incremental_when_fed_bar_by_bar_then_equals_batch(
        self, fixture: str, request: pytest.FixtureRequest
    ) -> None:
        # Arrange
        bars: DenseBars = request.getfixturevalue(fixture)
        bars = bars.until_day(2)
        # Act
        batch = compute_features(bars)
        frames = _frames_from_batches(bars, shuffle_seed=7)
        # Assert
        live = np.stack([f.values for f in frames])
        np.testing.assert_allclose(live, batch.values, rtol=TOL, atol=TOL, equal_nan=True)
        np.testing.assert_array_equal(np.stack([f.present for f in frames]), batch.present)
        np.testing.assert_array_equal(np.stack([f.gaps for f in frames]), batch.gaps)
        assert batch.warm[-1].all()
        usable = batch.values[batch.warm & batch.present]
        assert np.isfinite(usable).all()

    def test_wide_history_when_symbols_miss_bars_then_gaps_are_marked(
        self, wide_bars: DenseBars
    ) -> None:
        fs = compute_features(wide_bars.until_day(1))
        missing = ~np.isfinite(wide_bars.until_day(1).close)
        np.testing.assert_array_equal(~fs.present, missing)
        assert missing.any()  # real data has minutes without trades
        assert (fs.stale_bars[missing] >= 1).all()
        assert (fs.stale_bars[~missing] == 0).all()


class TestNoLookAhead:
    @pytest.mark.parametrize("cut", [70, 400, 600])
    def test_bars_after_t_when_perturbed_then_no_feature_at_or_before_t_changes(
        self, sample_bars: DenseBars, cut: int
    ) -> None:
        # Arrange
        bars = sample_bars.slice_rows(0, 800)
        # Act
        base = compute_features(bars)
        moved = compute_features(_perturbed(bars, cut, seed=cut))
        # Assert: bit-identical up to and including row ``cut``, and really different after
        np.testing.assert_array_equal(base.values[: cut + 1], moved.values[: cut + 1])
        after = np.nan_to_num(base.values[cut + 1:]) != np.nan_to_num(moved.values[cut + 1:])
        assert after.any()


    @settings(max_examples=12, deadline=None)
    @given(cut=st.integers(min_value=0, max_value=200), seed=st.integers(0, 2**16),
           drop=st.booleans())
    def test_any_cut_when_future_changed_or_dropped_then_past_identical(
        self, sample_bars: DenseBars, cut: int, seed: int, drop: bool
    ) -> None:
        bars = sample_bars.slice_rows(0, 220)
        base = compute_features(bars)
        if drop:  # the future loses bars instead of changing them
            moved = compute_features(bars.slice_rows(0, cut + 1))
        else:
            moved = compute_features(_perturbed(bars, cut, seed=seed))
        np.testing.assert_array_equal(base.values[: cut + 1], moved.values[: cut + 1])
        np.testing.assert_array_equal(base.gaps[: cut + 1], moved.gaps[: cut + 1])


class TestFormulas:
    """Independent pandas computations over each symbol's own bars (warm rows only)."""

    def test_features_when_recomputed_with_pandas_then_match(
        self, sample_bars: DenseBars
    ) -> None:
        bars = sample_bars.until_day(3)
        fs = compute_features(bars)
        for i in range(len(bars.symbols)):
            have = np.isfinite(bars.close[:, i])
            df = pd.DataFrame({
                "day": bars.ny_dates()[have],
                "o": bars.open[have, i], "h": bars.high[have, i], "l": bars.low[have, i],
                "c": bars.close[have, i], "v": bars.volume[have, i],
            })
            ref = _pandas_reference(df)
            ours = fs.values[have, i, :]
            warm = fs.warm[have, i]
            for name, expected in ref.items():
                np.testing.assert_allclose(
                    ours[warm, _col(name)], expected.to_numpy()[warm], rtol=1e-7, atol=TOL,
                    err_msg=f"{bars.symbols[i]} {name}",
                )


def _pandas_reference(df: pd.DataFrame) -> dict[str, pd.Series]:
    lc = np.log(df["c"])
    r = lc.diff()
    up = r.clip(lower=0).rolling(14).sum()
    down = (-r).clip(lower=0).rolling(14).sum()
    lv = np.log1p(df["v"])
    sma20 = df["c"].rolling(20).mean()
    lo30, hi30 = df["l"].rolling(30).min(), df["h"].rolling(30).max()
    by_day = df.groupby("day")
    return {
        "ret_session": np.log(df["c"] / by_day["o"].transform("first")),
        "dist_session_high": np.log(df["c"] / by_day["h"].cummax()),
        "rv_60": r.rolling(60).std(),
        "rsi_30": r.clip(lower=0).rolling(30).sum() / r.abs().rolling(30).sum(),
        "vol_z_60": (lv - lv.rolling(60).mean()) / lv.rolling(60).std(ddof=0),
        "ret_5": lc - lc.shift(5),
        "ret_60": lc - lc.shift(60),
        "rv_30": r.rolling(30).std(),
        "rsi_14": up / (up + down),
        "sma_dist_30": np.log(df["c"] / df["c"].rolling(30).mean()),
        "boll_z_20": (df["c"] - sma20) / df["c"].rolling(20).std(ddof=0),
        "vol_z_30": (lv - lv.rolling(30).mean()) / lv.rolling(30).std(ddof=0),
        "stoch_30": (df["c"] - lo30) / (hi30 - lo30),
        "range_1": (df["h"] - df["l"]) / df["c"],
    }


class TestGapsAndBadBars:
    def _engine_after_warmup(self, bars: DenseBars) -> tuple[FeatureEngine, int]:
        engine = FeatureEngine(bars.symbols)
        t = 0
        for t in range(WARMUP_BARS + 5):
            engine.update_arrays(bars.timestamp(t), o=bars.open[t], h=bars.high[t],
                                 lo=bars.low[t], c=bars.close[t], v=bars.volume[t])
        return engine, t + 1

    def test_bar_when_nan_or_negative_then_invalid_and_state_carried(
        self, sample_bars: DenseBars
    ) -> None:
        # Arrange
        engine, t = self._engine_after_warmup(sample_bars)
        c = sample_bars.close[t].copy()
        c[0], c[1] = np.nan, -5.0
        # Act
        fr = engine.update_arrays(sample_bars.timestamp(t), o=sample_bars.open[t],
                                  h=sample_bars.high[t], lo=sample_bars.low[t], c=c,
                                  v=sample_bars.volume[t])
        # Assert
        assert not fr.present[0] and not fr.present[1]
        assert fr.invalid[1] and not fr.invalid[0]  # NaN close = no bar; -5 = a bad bar
        assert fr.present[2:].all()
        assert fr.stale_bars[0] == 1 and fr.gaps[0] == 1
        assert np.isfinite(fr.values[:2, _col("ret_5")]).all()  # carried, not poisoned

    def test_feed_when_skips_minutes_then_every_symbol_counts_gaps(
        self, sample_bars: DenseBars
    ) -> None:
        # Arrange
        engine, t = self._engine_after_warmup(sample_bars)
        skip_to = t + 3  # three whole minutes never arrive
        # Act
        fr = engine.update_arrays(sample_bars.timestamp(skip_to), o=sample_bars.open[skip_to],
                                  h=sample_bars.high[skip_to], lo=sample_bars.low[skip_to],
                                  c=sample_bars.close[skip_to], v=sample_bars.volume[skip_to])
        # Assert
        assert sample_bars.timestamp(skip_to) - sample_bars.timestamp(t - 1) == timedelta(
            minutes=4)
        assert (fr.gaps >= 3).all()
        assert (fr.stale_bars == 0).all()  # they are back now


class TestRanks:
    def test_ranks_when_ties_then_averaged(self) -> None:
        np.testing.assert_array_equal(
            average_ranks(np.array([3.0, 1.0, 2.0, 2.0, 5.0, 1.0])),
            [4.0, 0.5, 2.5, 2.5, 5.0, 0.5],
        )
