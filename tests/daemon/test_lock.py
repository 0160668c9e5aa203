"""One daemon per state directory, with real processes: a second ``tradingd run`` exits 2
naming the holder's pid; the read-only commands work beside the running daemon; a
killed daemon leaves no stale lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.lock import StateDirLock, StateDirLocked
from signals import demodata
from tests.data import REPO
from tests.kit import process_env


def _env() -> dict[str, str]:
    return process_env()


def _tradingd(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--state-dir", str(state)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60,
                          check=False)


def _start(csv: Path, state: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--replay", str(csv), "--speed", "30",
             "--state-dir", str(state)],
            cwd=REPO, env=_env(), stdout=out, stderr=subprocess.STDOUT)


def _wait_ready(log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while '"daemon.ready"' not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "daemon never became ready"
        time.sleep(0.05)


class TestStateDirLock:
    def test_acquire_when_held_in_this_process_by_another_descriptor_then_refused(
            self, tmp_path: Path) -> None:
        with StateDirLock(tmp_path) as first:
            with pytest.raises(StateDirLocked) as info:
                StateDirLock(tmp_path).acquire()
            assert info.value.holder == os.getpid()
            assert first.held
        StateDirLock(tmp_path).acquire().release()  # free again once released

    @pytest.mark.slow
    def test_second_daemon_when_first_runs_then_exit_2_naming_pid_and_readers_work(
            self, tmp_path: Path) -> None:
        # Arrange: one daemon replaying a day at 30x, so it runs for a while
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=10, seed=5)
        state = tmp_path / "state"
        first = _start(csv, state, tmp_path / "first.log")
        try:
            _wait_ready(tmp_path / "first.log", first)
            # Act
            second = subprocess.run(
                [sys.executable, "-m", "daemon.cli", "run", "--replay", str(csv),
                 "--state-dir", str(state)],
                cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60, check=False)
            status = _tradingd("status", "--json", state=state)
            audit = _tradingd("audit", "--format", "json", state=state)
            # Assert
            assert second.returncode == 2
            assert f"pid {first.pid}" in second.stderr
            locked = [json.loads(line) for line in second.stdout.splitlines()
                      if line.startswith("{") and "state_dir_locked" in line]
            assert [e["holder_pid"] for e in locked] == [first.pid]
            assert first.poll() is None, "the first daemon must not notice"
            assert status.returncode == 0 and json.loads(status.stdout)["running"] is True
            assert audit.returncode == 0
            # A daemon that dies without cleaning up leaves no stale lock.
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            third = _start(csv, state, tmp_path / "third.log")
            try:
                _wait_ready(tmp_path / "third.log", third)
            finally:
                third.send_signal(signal.SIGTERM)
                assert third.wait(60) == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
