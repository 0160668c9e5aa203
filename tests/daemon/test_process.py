"""The daemon as a real process: systemd notifications, SIGTERM, JSON logs on a pipe."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signals import demodata
from tests.data import REPO
from tests.kit import process_env

pytestmark = pytest.mark.slow


def _spawn(tmp_path: Path, env_extra: dict[str, str]) -> subprocess.Popen[str]:
    csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=10, seed=5)
    env = process_env()
    env.update(env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--replay", str(csv), "--speed", "60",
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class TestSystemdProcess:
    def test_run_when_notify_socket_and_sigterm_then_ready_watchdog_stopping_and_exit_0(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a datagram socket standing in for systemd's notify socket
        addr = str(tmp_path / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(addr)
        sock.settimeout(20)
        proc = _spawn(tmp_path, {"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "200000"})
        try:
            # Act: READY once trading; keep-alives from the loop, which may beat while the
            # daemon is still starting (it yields while the calendar builds on a thread)
            messages: list[str] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (
                    any("READY=1" in m for m in messages)
                    and any("WATCHDOG=1" in m for m in messages)):
                messages.append(sock.recv(4096).decode())
            assert any("READY=1" in m for m in messages), messages
            assert any("WATCHDOG=1" in m for m in messages), messages
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            sock.settimeout(2)
            while not any("STOPPING=1" in m for m in messages):
                messages.append(sock.recv(4096).decode())
        finally:
            if proc.poll() is None:
                proc.kill()
            sock.close()
        # Assert
        assert proc.returncode == 0, out[-2000:]
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines, "stdout is a pipe: every log line must be JSON"
        events = [e["event"] for e in lines]
        assert "daemon.ready" in events
        summary = [e for e in lines if e["event"] == "daemon.session_summary"]
        assert len(summary) == 1 and summary[0]["reason"] == "SIGTERM"
        assert {"signals", "orders", "fills", "rejects_by_reason", "pnl"} <= set(summary[0])
        status = json.loads((tmp_path / "state" / "status.json").read_text())
        assert status["trading_state"] == "ACTIVE" and "positions" in status
