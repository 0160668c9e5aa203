"""The systemd unit: its hardening score, its command line, and its ExecStart run as a
process (the shipped config, only APCA_* in the environment) against the emulator."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import build_parser
from signals import demodata
from tests.data import REPO
from tests.kit import process_env

UNIT = REPO / "systemd" / "paper-trading-session.service"
KEY, SECRET = "PKUNITTEST000000", "unit-secret-canary-77"


def service() -> dict[str, list[str]]:
    """The [Service] section: every key with all its values, in order."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def exec_start(state_dir: Path) -> list[str]:
    """ExecStart as this checkout runs it: the venv's tradingd is ``python -m daemon.cli``,
    /etc/tradingd/execution.yaml the shipped config, ${STATE_DIRECTORY} a temp dir."""
    argv = shlex.split(service()["ExecStart"][0])
    assert argv[0] == "/opt/tradingd/.venv/bin/tradingd"
    shipped = str(REPO / "config" / "execution.yaml")
    args = [shipped if a == "/etc/tradingd/execution.yaml" else
            str(state_dir) if a == "${STATE_DIRECTORY}" else a for a in argv[1:]]
    return [sys.executable, "-m", "daemon.cli", *args]


class TestUnitFile:
    def test_security_when_analyzed_offline_then_exposure_at_most_2(self) -> None:
        analyze = shutil.which("systemd-analyze")
        assert analyze is not None, "make test installs systemd (scripts/system-deps.sh)"
        out = subprocess.run([analyze, "security", "--offline=yes", str(UNIT)],
                             capture_output=True, text=True, check=False).stdout
        score = re.search(r"Overall exposure level for [\w.-]+: ([\d.]+)", out)
        assert score is not None, out[-500:]
        assert float(score.group(1)) <= 2.0

    def test_hardening_when_read_then_network_for_the_broker_and_no_reload(self) -> None:
        svc = service()
        assert svc["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
        assert "PrivateNetwork" not in svc and "IPAddressDeny" not in svc
        assert "ExecReload" not in svc  # a reload never silently halts trading
        assert svc["SystemCallFilter"] == ["@system-service", "~@privileged"]
        assert svc["Type"] == ["notify"] and svc["WatchdogSec"] == ["30"]

    def test_exec_start_when_parsed_by_the_cli_then_the_live_session_forever(
        self, tmp_path: Path
    ) -> None:
        args = build_parser().parse_args(exec_start(tmp_path)[3:])
        assert (args.command, args.broker, args.session, args.replay) == (
            "run", "alpaca", "forever", None)
        assert args.state_dir == tmp_path


def _env(**extra: str) -> dict[str, str]:
    env = process_env()
    env.update(PYTHONPATH=str(REPO), APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET, **extra)
    return env


def _snapshot(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/_control/snapshot", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


@pytest.mark.slow
class TestExecStartOnEmulator:
    @pytest.fixture
    def emulator(self, tmp_path: Path) -> Any:
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=6, seed=9)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--bars", str(csv),
             "--bar-interval", "0.03", "--rebase-now", "--wait-subscriber",
             "--key-id", KEY, "--secret-key", SECRET],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        port = re.search(r"127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert port is not None
        try:
            yield proc, f"http://127.0.0.1:{port.group(1)}", [f"DEMO{i:02d}" for i in range(6)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def test_exec_start_when_only_apca_env_then_exit_2_naming_feed_symbols_no_order(
        self, emulator: Any, tmp_path: Path
    ) -> None:
        _, base, _ = emulator
        done = subprocess.run(exec_start(tmp_path / "state"), cwd=REPO, capture_output=True,
                              text=True, timeout=60, check=False,
                              env=_env(APCA_API_BASE_URL=base, APCA_API_DATA_URL=base))
        assert done.returncode == 2, done.stderr[-2000:]
        assert "feed.symbols" in done.stderr
        assert _snapshot(base)["orders"] == []

    def test_exec_start_when_symbols_in_env_file_then_trades_only_listed_symbols(
        self, emulator: Any, tmp_path: Path
    ) -> None:
        # Arrange
        emu, base, symbols = emulator
        daemon = subprocess.Popen(
            exec_start(tmp_path / "state"), cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env=_env(APCA_API_BASE_URL=base, APCA_API_DATA_URL=base,
                     TRADINGD_FEED__SYMBOLS=json.dumps(symbols)))
        try:
            # Act: the emulator streams its day once the daemon subscribed, then stops
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and "bars done" not in emu.stdout.readline():
                pass
            time.sleep(3.0)
            daemon.send_signal(signal.SIGTERM)
            out, _ = daemon.communicate(timeout=60)
        finally:
            if daemon.poll() is None:
                daemon.kill()
        snap = _snapshot(base)
        # Assert
        assert daemon.returncode == 0, out[-3000:]
        assert snap["orders"], "the live session traded the emulator's stream"
        assert {o["symbol"] for o in snap["orders"]} <= set(symbols)
        assert '"feed":"alpaca"' in out and "feed.replay_start" not in out
        assert KEY not in out and SECRET not in out
