"""Running the daemon as a process: the systemd unit's command, and again and again,
killed at random points."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.data import REPO

Spawn = Callable[[Path], "subprocess.Popen[bytes]"]


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until ``text`` appears in ``log`` (False if the process ends or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if text in log.read_text(errors="replace"):
            return True
        time.sleep(0.02)
    return False


def kill_lives(spawn: Spawn, logs: Path, rng: random.Random, kills: int,
               *, startup: tuple[float, float] = (0.2, 1.0),
               running: tuple[float, float] = (0.1, 1.2)) -> list[str]:
    """Start the daemon (``spawn(log_path)``) and SIGKILL it ``kills`` times: one life in
    five during start-up or recovery, the others a random while after ``daemon.ready``.
    Returns how each life ended."""
    ends = []
    for i in range(kills):
        log = logs / f"life-{i:02d}.log"
        proc = spawn(log)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(*startup))
        else:
            wait_for(log, '"daemon.ready"', proc, 30)
            time.sleep(rng.uniform(*running))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            ends.append("killed")
        else:
            ends.append(f"exited {proc.returncode}")
        proc.wait(10)
    return ends


def unit_exec_start(state_dir: Path) -> list[str]:
    """The systemd unit's ExecStart, with the shipped config and this checkout's Python."""
    unit = (REPO / "systemd" / "paper-trading-session.service").read_text()
    (line,) = [ln for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    argv = line.removeprefix("ExecStart=").split()
    assert argv[0].endswith("/tradingd"), argv
    subst = {"/etc/tradingd/execution.yaml": str(REPO / "config" / "execution.yaml"),
             "${STATE_DIRECTORY}": str(state_dir)}
    return [sys.executable, "-m", "daemon.cli", *(subst.get(a, a) for a in argv[1:])]
