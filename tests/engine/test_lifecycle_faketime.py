"""Driving the wall clock of a real process with libfaketime: the lifecycle runner on the
real clock and sleep (uvloop) moves through a session's close when a test rewrites the
timestamp file. Monotonic time is left alone, so asyncio's timers stay real.

The same mechanism drives the daemon over three sessions (``tests/daemon/
test_live_sessions.py``); ``tests.faketime`` has the environment and the library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.data import REPO
from tests.faketime import faketime_env, jump

pytestmark = pytest.mark.slow


def _read(proc: subprocess.Popen[str], until: str, timeout: float) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            got.append(json.loads(line))
            if until in line:
                return got
    raise AssertionError(f"no {until!r} within {timeout}s; got {got}")


def test_runner_when_faketime_file_jumps_then_closing_and_close_follow(tmp_path: Path) -> None:
    # Arrange: the Friday after Thanksgiving, 12:49:58 New York (closes at 13:00).
    ts = tmp_path / "faketime"
    env = {**os.environ, **faketime_env(ts, datetime(2024, 11, 29, 17, 49, 58, tzinfo=UTC)),
           "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "tests.engine.faketime_runner"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Act / Assert: OPEN at start, CLOSING two (real) seconds later at 12:50.
        first = _read(proc, '"CLOSING"', 30)
        assert [e["phase"] for e in first] == ["PREFLIGHT", "WARMUP", "OPEN", "CLOSING"]
        assert first[-1]["ts"].startswith("2024-11-29T17:50:0")
        # The test jumps the clock to a second before the close.
        jump(ts, datetime(2024, 11, 29, 17, 59, 59, tzinfo=UTC))
        rest = _read(proc, '"finished"', 30)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [e.get("phase") or e.get("hook") or "finished" for e in rest] == [
        "CLOSED", "on_close", "finished"]
    assert rest[0]["ts"].startswith("2024-11-29T18:00:0")  # 13:00 New York, early close
    assert time.monotonic() - t0 < 25  # eleven minutes of session in seconds
