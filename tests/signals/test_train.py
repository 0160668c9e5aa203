"""Training CLI, time split and the numpy metrics."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from signals.artifacts import FEATURES_FILE, METADATA_FILE, MODEL_FILE, load_model_dir
from signals.bars import DenseBars, read_bars_csv
from signals.features import FEATURE_NAMES
from signals.metrics import auc, entropy, psi, rank_ic
from signals.train import forward_returns, main, retrain, segment_masks, split_rows


def write_synthetic_csv(path: Path, *, symbols: int = 50, days: int = 1, seed: int = 1) -> None:
    """Seeded random-walk minute bars in the shared CSV format (09:29 to 15:59 NY)."""
    rng = np.random.default_rng(seed)
    rows = ["timestamp,symbol,open,high,low,close,volume"]
    price = rng.uniform(20, 300, size=symbols)
    day0 = datetime(2024, 3, 4, 14, 29, tzinfo=UTC)  # 09:29 New York (EST)
    for d in range(days):
        for m in range(391):
            ts = (day0 + timedelta(days=d, minutes=m)).strftime("%Y-%m-%dT%H:%M:00+00:00")
            o = price
            c = o * np.exp(rng.normal(0, 0.001, size=symbols))
            hi = np.maximum(o, c) * (1 + rng.uniform(0, 0.0008, size=symbols))
            lo = np.minimum(o, c) * (1 - rng.uniform(0, 0.0008, size=symbols))
            vol = rng.integers(100, 20000, size=symbols)
            for i in range(symbols):
                rows.append(f"{ts},S{i:02d},{o[i]:.4f},{hi[i]:.4f},{lo[i]:.4f},"
                            f"{c[i]:.4f},{vol[i]}")
            price = c
    path.write_text("\n".join(rows) + "\n")


class TestTrainCli:
    def test_small_when_one_synthetic_day_then_writes_loadable_model_in_seconds(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # Arrange
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv)
        # Act
        t0 = time.perf_counter()
        code = main(["--bars", str(csv), "--out", str(tmp_path / "model"), "--small"])
        secs = time.perf_counter() - t0
        # Assert
        assert code == 0
        assert secs < 15
        out = capsys.readouterr().out
        assert "AUC" in out and "test          absent  (deploy mode" in out
        for name in (MODEL_FILE, FEATURES_FILE, METADATA_FILE):
            assert (tmp_path / "model" / name).is_file()
        meta = json.loads((tmp_path / "model" / METADATA_FILE).read_text())
        assert meta["feature_names"] == list(FEATURE_NAMES)
        assert set(meta["feature_stats"]) == set(FEATURE_NAMES)
        assert meta["params"]["nthread"] == 1
        assert meta["mode"] == "deploy" and meta["ranges"]["test"] is None
        assert meta["report"]["validation"]["rows"] > 0
        load_model_dir(tmp_path / "model" / MODEL_FILE)

    def test_random_walk_when_trained_then_held_out_shows_no_skill(self, tmp_path: Path) -> None:
        """A leak (features seeing the label's future) would show up as skill here."""
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=50, days=2, seed=3)
        assert main(["--bars", str(csv), "--out", str(tmp_path / "m"), "--small",
                     "--train-until", "2024-03-04"]) == 0
        test = json.loads((tmp_path / "m" / METADATA_FILE).read_text())["report"]["test"]
        assert abs(test["auc"] - 0.5) < 0.03
        assert abs(test["rank_ic"]["mean_ic"]) < 0.05

    def test_train_until_when_after_last_day_then_deploy_mode_on_all_the_data(
        self, tmp_path: Path
    ) -> None:
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=10)
        code = main(["--bars", str(csv), "--out", str(tmp_path / "m"),
                     "--train-until", "2030-01-01", "--small"])
        assert code == 0
        meta = json.loads((tmp_path / "m" / METADATA_FILE).read_text())
        assert meta["mode"] == "deploy"
        assert meta["report"]["test"] == {
            "rows": 0, "absent": "deploy mode: no day after the training range"}

    def test_train_until_when_before_first_day_then_exit_code_2(self, tmp_path: Path) -> None:
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=10)
        code = main(["--bars", str(csv), "--out", str(tmp_path / "m"),
                     "--train-until", "2024-01-02", "--small"])
        assert code == 2


def _with_later_days(cut: Path, full: Path, out: Path, day_from: str) -> None:
    """``cut`` plus the rows of ``full`` from ``day_from`` on, plus a symbol that appears
    only on those days and sorts before every other (it would move every training row)."""
    later = [line for line in full.read_text().splitlines()[1:] if line >= day_from]
    extra = [",".join([line.split(",")[0], "AAA", *line.split(",")[2:]])
             for line in later if ",S00," in line]
    out.write_text(cut.read_text() + "\n".join(later + extra) + "\n")


class TestDeployDeterminism:
    @pytest.mark.parametrize("extra", [[], ["--first-symbols", "10"]], ids=["all", "first10"])
    def test_train_until_d_when_data_ends_at_d_or_goes_on_then_identical_trees(
        self, tmp_path: Path, extra: list[str]
    ) -> None:
        # Arrange: 5 days (Mon 2024-03-04 .. Fri); D is Wednesday.
        full = tmp_path / "full.csv"
        write_synthetic_csv(full, symbols=20, days=5, seed=11)
        lines = full.read_text().splitlines()
        cut = tmp_path / "through_d.csv"
        cut.write_text("\n".join([lines[0], *(x for x in lines[1:] if x < "2024-03-07")])
                       + "\n")
        longer = tmp_path / "longer.csv"
        _with_later_days(cut, full, longer, "2024-03-07")
        # Act
        for name, csv in (("m_cut", cut), ("m_long", longer)):
            assert main(["--bars", str(csv), "--out", str(tmp_path / name), "--small",
                         "--train-until", "2024-03-06", "--early-stop", "0",
                         "--max-rounds", "25", *extra]) == 0
        # Assert
        cut_model = load_model_dir(tmp_path / "m_cut" / MODEL_FILE)
        long_model = load_model_dir(tmp_path / "m_long" / MODEL_FILE)
        assert cut_model.booster.get_dump(dump_format="json", with_stats=True) == \
            long_model.booster.get_dump(dump_format="json", with_stats=True)
        assert cut_model.metadata["mode"] == "deploy"
        assert long_model.metadata["mode"] == "evaluate"
        assert long_model.metadata["report"]["test"]["rows"] > 0
        assert long_model.metadata["ranges"]["test"] == ["2024-03-07", "2024-03-08"]
        assert "AAA" not in long_model.metadata["symbols"]
        assert cut_model.metadata["feature_stats"] == long_model.metadata["feature_stats"]


class TestRetrain:
    def test_retrain_when_session_closed_then_model_through_that_day_swapped(
        self, tmp_path: Path
    ) -> None:
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=12, days=3, seed=2)
        bars = read_bars_csv(csv)
        got = retrain(bars, through=datetime(2024, 3, 5).date(), out_dir=tmp_path / "models",
                      small=True)
        assert got.swapped and got.model_path is not None
        assert got.model_path == tmp_path / "models" / "model-2024-03-05" / MODEL_FILE
        assert got.metadata is not None
        assert got.metadata["ranges"]["validation"][1] == "2024-03-05"
        assert got.metadata["ranges"]["test"] == ["2024-03-06", "2024-03-06"]
        load_model_dir(got.model_path)
        assert not list((tmp_path / "models").glob(".model-*"))  # staging renamed

    def test_retrain_when_feature_version_differs_then_running_model_stays(
        self, tmp_path: Path
    ) -> None:
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=12, days=2, seed=2)
        got = retrain(read_bars_csv(csv), through=datetime(2024, 3, 5).date(),
                      out_dir=tmp_path, small=True, running_feature_version=-1)
        assert not got.swapped
        assert got.reason.startswith("feature_version") and "not swapped" in got.reason

    def test_retrain_when_too_little_data_then_not_trained(self, tmp_path: Path) -> None:
        csv = tmp_path / "bars.csv"
        write_synthetic_csv(csv, symbols=1, days=1, seed=2)  # excess returns all zero
        got = retrain(read_bars_csv(csv), through=datetime(2024, 3, 4).date(),
                      out_dir=tmp_path, small=True)
        assert (got.swapped, got.model_path) == (False, None)
        assert got.reason.startswith("not trained: too little data")


class TestSplit:
    def test_split_when_train_until_given_then_test_starts_next_day_and_val_is_tail(
        self, sample_bars: DenseBars
    ) -> None:
        seg = split_rows(sample_bars, datetime(2018, 2, 22).date(), 0.25)
        days = sample_bars.ny_dates()
        assert str(days[seg.test]) == "2018-02-23" and str(days[seg.test - 1]) == "2018-02-22"
        assert 0 < seg.val < seg.test

    def test_masks_when_horizon_crosses_boundary_then_row_dropped(
        self, sample_bars: DenseBars
    ) -> None:
        seg = split_rows(sample_bars, None, 0.2)
        usable = np.ones(sample_bars.close.shape, dtype=np.bool_)
        masks = segment_masks(usable, seg, horizon=15)
        rows = {k: np.flatnonzero(v.any(axis=1)) for k, v in masks.items()}
        assert rows["train"].max() + 15 < seg.val
        assert rows["validation"].min() >= seg.val and rows["validation"].max() + 15 < seg.test
        assert not (masks["train"] & masks["validation"]).any()

    def test_forward_returns_when_exit_in_next_session_then_nan(
        self, sample_bars: DenseBars
    ) -> None:
        fwd = forward_returns(sample_bars, 15)
        minutes = [sample_bars.timestamp(t) for t in range(len(sample_bars))]
        last_of_day = max(t for t in range(len(minutes)) if minutes[t].day == 16)
        assert np.isnan(fwd[last_of_day - 14:last_of_day + 1]).all()
        t = 100
        i = 0
        assert fwd[t, i] == pytest.approx(
            np.log(sample_bars.close[t + 15, i] / sample_bars.close[t, i]))


class TestMetrics:
    def test_auc_when_known_cases_then_exact(self) -> None:
        y = np.array([False, False, True, True])
        assert auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
        assert auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
        assert auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
        assert auc(y, np.full(4, 0.5)) == 0.5

    def test_rank_ic_when_scores_are_monotone_in_returns_then_one(self) -> None:
        rng = np.random.default_rng(0)
        fwd = rng.normal(size=(20, 30))
        mask = np.ones_like(fwd, dtype=np.bool_)
        assert rank_ic(np.exp(fwd), fwd, mask)["mean_ic"] == pytest.approx(1.0)
        assert rank_ic(-fwd, fwd, mask)["mean_ic"] == pytest.approx(-1.0)

    def test_entropy_and_psi_when_uniform_vs_collapsed_then_extremes(self) -> None:
        uniform = np.full(10, 100.0)
        collapsed = np.zeros(10)
        collapsed[4] = 1000.0
        assert entropy(uniform) == pytest.approx(np.log(10))
        assert entropy(collapsed) == 0.0
        assert psi(uniform, uniform) == pytest.approx(0.0)
        assert psi(uniform, collapsed) > 2.0


class TestCsv:
    def test_read_when_offsets_change_at_dst_then_utc_minutes_are_regular(self) -> None:
        from tests.signals.conftest import FULL, market_dir

        bars = read_bars_csv(market_dir() / FULL, symbols=["AAPL"])
        local = [bars.timestamp(t) for t in (0, len(bars) - 1)]
        assert local[0].isoformat() == "2018-02-16T14:29:00+00:00"  # 09:29 EST
        assert local[1].isoformat() == "2018-04-20T19:59:00+00:00"  # 15:59 EDT
