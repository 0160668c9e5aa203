"""What ``tradingd`` imports, command by command, as a process: the CLI's own commands need
none of numpy, pandas, scipy or xgboost (seconds of start-up on a busy machine), and
``tradingd run`` imports xgboost only with the model enabled.

No timing: each command runs in a fresh interpreter (``daemon.cli.main`` with the
command's argv, as the console script calls it) that then writes its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.data import REPO

pytestmark = pytest.mark.slow

HEAVY = ("numpy", "pandas", "scipy", "xgboost", "exchange_calendars", "alpaca", "aiohttp")

_PROBE = """
import gc, json, sys
default_gc = gc.get_threshold()
from daemon.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules), "default_gc": default_gc,
               "gc": gc.get_threshold(), "frozen": gc.get_freeze_count()}, fh)
"""


def _tradingd(tmp_path: Path, *argv: str, **env_extra: str) -> tuple[Any, set[str]]:
    """Run ``tradingd argv`` in a fresh interpreter: its exit code and the top-level
    packages it imported."""
    code, packages, _ = _probe(tmp_path, *argv, **env_extra)
    return code, packages


def _probe(tmp_path: Path, *argv: str,
           **env_extra: str) -> tuple[Any, set[str], dict[str, Any]]:
    """``_tradingd``, and the garbage collector's state when the command returned."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADINGD_", "APCA_"))}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    done = subprocess.run([sys.executable, "-c", _PROBE, str(out), *argv], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    probe = json.loads(out.read_text())
    return probe["code"], {m.split(".")[0] for m in probe["modules"]}, probe


def _demo_day(tmp_path: Path) -> tuple[Path, Path]:
    """Three days of the project's demo bars to train on and the day after to replay."""
    train, day = tmp_path / "train.csv", tmp_path / "day.csv"
    subprocess.run([sys.executable, "-m", "signals.demodata", "--out", str(train),
                    "--last-day-to", str(day), "--days", "4", "--symbols", "6", "--seed", "5"],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    return train, day


class TestCliCommands:
    @pytest.mark.parametrize("argv", [
        ("--help",),
        ("check-config", "--json"),
        ("status",),
        ("halt", "--why", "test", "--timeout", "1"),
        ("pending", "--timeout", "1"),
    ], ids=lambda a: a[0])
    def test_command_when_run_then_no_numeric_stack_sdk_or_model_imported(
            self, tmp_path: Path, argv: tuple[str, ...]) -> None:
        # Arrange: the settings' state directory, empty: no daemon to talk to
        state = tmp_path / "state"
        state.mkdir()
        # Act
        code, packages = _tradingd(tmp_path, *argv, TRADINGD_DAEMON__STATE_DIR=str(state))
        # Assert: the command did its work (help and config: 0; no daemon: 3) ...
        assert code == (3 if argv[0] in ("status", "halt", "pending") else 0)
        # ... without any of the heavy packages
        assert packages.isdisjoint(HEAVY), sorted(packages & set(HEAVY))


class TestRun:
    def test_run_when_model_disabled_then_xgboost_never_imported_and_when_enabled_then_it_is(
            self, tmp_path: Path) -> None:
        # Arrange: a model trained by the real command, and a day to replay
        train, day = _demo_day(tmp_path)
        code, trained = _tradingd(tmp_path, "train", "--bars", str(train), "--out",
                                  str(tmp_path / "model"), "--small")
        assert code == 0 and "xgboost" in trained
        replay = ("run", "--replay", str(day), "--speed", "max")
        # Act
        code_off, without, gc_state = _probe(tmp_path, *replay, "--state-dir",
                                             str(tmp_path / "off"))
        code_on, with_model = _tradingd(
            tmp_path, *replay, "--state-dir", str(tmp_path / "on"),
            TRADINGD_SIGNALS__MODEL__ENABLED="true",
            TRADINGD_SIGNALS__MODEL__MODEL_PATH=str(tmp_path / "model" / "model.ubj"))
        # Assert: both sessions ran to the end of the day ...
        assert code_off == 0 and code_on == 0
        # ... xgboost (and its scipy) only where the model scores the bars
        assert "xgboost" not in without and "scipy" not in without
        assert "xgboost" in with_model
        # ... and the session ran with the collector's own thresholds, over what it built
        # after start-up only (daemon/startup.py holds it back until READY)
        assert gc_state["gc"] == gc_state["default_gc"]
        assert gc_state["frozen"] > 100_000
