"""Start-up as an operator sees it: ``tradingd run`` as a process when the broker is not
there yet, when it refuses the keys, and what a replay journals before its first bar."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from engine.journal import JOURNAL_FILE, Journal
from signals import demodata
from tests.daemon.lives import unit_exec_start
from tests.data import REPO
from tests.kit import process_env

pytestmark = pytest.mark.slow

KEY, SECRET = "PKSTARTUP0000000", "startup-secret-canary-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _env(base: str, **extra: str) -> dict[str, str]:
    env = process_env()
    env.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET, APCA_API_BASE_URL=base,
               APCA_API_DATA_URL=base, TRADINGD_FEED__SOURCE="alpaca",
               TRADINGD_FEED__SYMBOLS='["DEMO00", "DEMO01"]',
               TRADINGD_DAEMON__CONNECT_BACKOFF_SECS="0.2",
               # an always-open emulator: the trading day is not under test here
               TRADINGD_SESSION__LIFECYCLE="false", **extra)
    return env


def _daemon(state: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--broker", "alpaca", "--state-dir",
         str(state)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def _lines_until(proc: subprocess.Popen[str], event: str, count: int,
                 timeout: float) -> list[dict[str, Any]]:
    """Read JSON log lines until ``count`` lines of ``event`` were seen."""
    assert proc.stdout is not None
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        assert "Traceback" not in line, line
        if line.startswith("{"):
            rec = json.loads(line)
            seen.append(rec)
            if sum(1 for r in seen if r["event"] == event) >= count:
                return seen
    raise AssertionError(f"fewer than {count} {event!r} lines: {seen[-5:]}")


class TestBrokerUnreachable:
    def test_run_when_broker_down_then_one_line_per_attempt_then_trades_when_it_comes_up(
            self, tmp_path: Path) -> None:
        # Arrange: nothing listens on the broker's port yet
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        daemon = _daemon(tmp_path / "state", _env(base))
        emu: subprocess.Popen[str] | None = None
        try:
            # Act
            early = _lines_until(daemon, "broker.unreachable", 2, 60)
            csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=2, seed=3)
            emu = subprocess.Popen(
                [sys.executable, "-m", "tests.alpaca_emulator", "--port", str(port),
                 "--bars", str(csv), "--bar-interval", "0.05", "--rebase-now",
                 "--key-id", KEY, "--secret-key", SECRET],
                cwd=REPO, env=_env(base), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            later = _lines_until(daemon, "daemon.ready", 1, 120)
            daemon.send_signal(signal.SIGTERM)
            rest, _ = daemon.communicate(timeout=60)
        finally:
            for p in (daemon, emu):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
        # Assert: one structured line per attempt, with the cause and the next retry
        tries = [r for r in early if r["event"] == "broker.unreachable"]
        assert [r["attempt"] for r in tries] == [1, 2]
        assert all("Connection refused" in r["cause"] or "refused" in r["cause"].lower()
                   for r in tries)
        assert tries[1]["retry_in_secs"] > tries[0]["retry_in_secs"]
        connected = [r for r in later if r["event"] == "broker.connected"]
        assert connected and connected[0]["attempts"] >= 3
        assert daemon.returncode == 0
        assert "Traceback" not in rest
        assert KEY not in rest and SECRET not in rest

    def test_run_when_attempts_limited_then_exits_nonzero_with_one_final_line(
            self, tmp_path: Path) -> None:
        base = f"http://127.0.0.1:{_free_port()}"
        daemon = _daemon(tmp_path / "state", _env(base, TRADINGD_DAEMON__CONNECT_ATTEMPTS="2"))
        out, _ = daemon.communicate(timeout=120)
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert daemon.returncode == 1
        assert "Traceback" not in out
        finals = [r for r in records if r["event"] == "broker.unreachable" and r.get("final")]
        assert len(finals) == 1 and finals[0]["attempt"] == 2
        # A start that never reached the broker journals no books: recovery would take
        # them for the account's last state.
        journal = Journal(tmp_path / "state" / JOURNAL_FILE).open()
        try:
            assert journal.last("BooksSnapshot") is None
        finally:
            journal.close()


class TestBrokerRefusesKeys:
    def test_run_when_keys_wrong_then_exit_2_one_line_no_secret(self, tmp_path: Path) -> None:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", str(port),
             "--key-id", "OTHERKEY", "--secret-key", "OTHERSECRET"],
            cwd=REPO, env=_env(base), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until the emulator listens
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            daemon = _daemon(tmp_path / "state", _env(base))
            out, _ = daemon.communicate(timeout=60)
        finally:
            emu.kill()
            emu.wait()
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert daemon.returncode == 2
        assert "Traceback" not in out
        (auth,) = [r for r in records if r["event"] == "broker.auth_failed"]
        assert "401" in auth["error"] and "APCA_API_KEY_ID" in auth["detail"]
        assert not [r for r in records if r["event"] == "broker.unreachable"]
        assert KEY not in out and SECRET not in out


class TestReplayStamps:
    async def test_replay_when_fresh_state_then_no_row_is_stamped_before_the_first_bar(
            self, tmp_path: Path) -> None:
        from config.settings import load_settings
        from daemon.app import Daemon

        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=3, seed=5)
        settings = load_settings(overrides={
            "daemon": {"state_dir": str(tmp_path / "state")},
            "feed": {"source": "replay", "replay": str(csv), "speed": "max"}})
        first = pd.to_datetime(pd.read_csv(csv)["timestamp"], utc=True).min()
        assert await Daemon(settings).run() == 0
        journal = Journal(tmp_path / "state" / JOURNAL_FILE).open()
        try:
            stamps = [row.ts for row in journal.rows()]
        finally:
            journal.close()
        assert stamps and min(stamps) >= first


class TestLiveByDefault:
    def test_unit_command_when_only_apca_env_then_exit_2_naming_symbols_and_no_order(
            self, tmp_path: Path) -> None:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=3, seed=9)
        only_apca = {k: v for k, v in os.environ.items()
                     if not k.startswith(("TRADINGD_", "APCA_"))}
        only_apca.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET,
                         APCA_API_BASE_URL=base, APCA_API_DATA_URL=base)
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", str(port), "--bars",
             str(csv), "--bar-interval", "0.05", "--rebase-now", "--key-id", KEY,
             "--secret-key", SECRET], cwd=REPO, env=only_apca, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            daemon = subprocess.run(unit_exec_start(tmp_path / "state"), cwd=REPO,
                                    env=only_apca, capture_output=True, text=True,
                                    timeout=120, check=False)
            snapshot = _snapshot(base)
        finally:
            emu.kill()
            emu.wait()
        assert daemon.returncode == 2, daemon.stdout[-2000:] + daemon.stderr[-2000:]
        assert "feed.symbols" in daemon.stderr
        assert "Traceback" not in daemon.stderr + daemon.stdout
        assert snapshot["orders"] == []


def _snapshot(base: str) -> dict[str, Any]:
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/_control/snapshot", timeout=5) as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
