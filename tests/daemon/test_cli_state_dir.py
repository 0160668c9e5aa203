"""``tradingd status`` / ``report`` / ``audit`` find the state directory a demo run used
(``make run`` writes ``state/demo``; the shipped config says ``state``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from signals import demodata
from tests.data import REPO
from tests.kit import process_env

pytestmark = pytest.mark.slow


def _tradingd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = process_env()
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


class TestStateDirDiscovery:
    def test_status_and_report_when_demo_ran_in_state_demo_then_found_and_said(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a demo replay the way `make run` does it, from the same directory.
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=6, seed=3)
        run = _tradingd(tmp_path, "run", "--replay", str(csv), "--speed", "max",
                        "--state-dir", "state/demo")
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        # Act
        status = _tradingd(tmp_path, "status", "--json")
        report = _tradingd(tmp_path, "report")
        audit = _tradingd(tmp_path, "audit", "--format", "json")
        # Assert
        for done in (status, report, audit):
            assert done.returncode == 0, done.stderr
            assert "using state/demo (the newest under it; --state-dir to choose)" in done.stderr
        assert json.loads(status.stdout)["running"] is False
        assert "html: state/demo/report-" in report.stdout
        assert (tmp_path / "state" / "demo").is_dir()

    def test_status_when_no_state_anywhere_then_exit_3_naming_the_configured_dir(
        self, tmp_path: Path
    ) -> None:
        (tmp_path / "state" / "empty").mkdir(parents=True)
        done = _tradingd(tmp_path, "status")
        assert done.returncode == 3
        assert "no daemon running and no status in state" in done.stderr


class TestRunFeedRules:
    """``run --broker alpaca`` is live by default; a replay reaches only the paper broker
    or a loopback emulator. Both refusals happen before anything connects."""

    def test_run_when_alpaca_without_symbols_then_exit_2_naming_feed_symbols(
        self, tmp_path: Path
    ) -> None:
        shipped = REPO / "config" / "execution.yaml"
        env = {"APCA_API_KEY_ID": "PKREFUSE00000000", "APCA_API_SECRET_KEY": "refuse-secret"}
        done = _tradingd_env(tmp_path, env, "run", "--config", str(shipped), "--broker",
                             "alpaca", "--session", "forever", "--state-dir", "st")
        assert done.returncode == 2
        assert "feed.symbols" in done.stderr
        assert not (tmp_path / "st" / "journal.sqlite").exists()

    def test_run_when_replay_against_a_broker_account_then_exit_2_naming_feed_replay(
        self, tmp_path: Path
    ) -> None:
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=3, seed=3)
        env = {"APCA_API_KEY_ID": "PKREFUSE00000000", "APCA_API_SECRET_KEY": "refuse-secret"}
        done = _tradingd_env(tmp_path, env, "run", "--broker", "alpaca", "--replay", str(csv),
                             "--state-dir", "st")
        assert done.returncode == 2
        assert done.stderr.startswith(f"tradingd: config error: feed.replay='{csv}': a "
                                      "replay trades only the paper broker")
        assert "https://paper-api.alpaca.markets" in done.stderr
        assert not (tmp_path / "st").exists()


def _tradingd_env(cwd: Path, extra: dict[str, str], *args: str
                  ) -> subprocess.CompletedProcess[str]:
    env = process_env()
    env.update(PYTHONPATH=str(REPO), **extra)
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
