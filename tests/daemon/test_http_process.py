"""The operator surface of ``tradingd run --broker alpaca`` as a real process, against the
Alpaca emulator as a process, configured the way an operator would: only
``TRADINGD_HTTP__LISTEN`` and ``TRADINGD_HTTP__TOKEN`` (HTTP is on by default live)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from signals import demodata
from tests.data import REPO

pytestmark = pytest.mark.slow

KEY, SECRET = "PKTESTHTTP000000", "http-secret-canary-0123456789"
TOKEN = "process-token-0123456789abcdef"
OPEN = ("new", "accepted", "partially_filled", "pending_new")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADINGD_", "APCA_"))}
    env.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET, **extra)
    return env


def _call(url: str, *, method: str = "GET", token: str | None = None,
          body: dict[str, Any] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def _json(url: str) -> dict[str, Any]:
    code, text = _call(url)
    assert code == 200, (url, code, text)
    doc: dict[str, Any] = json.loads(text)
    return doc


class Lines:
    """Drains a process's output in a thread (a full pipe would stall the process) and
    lets the test wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while time.monotonic() < deadline:
                for line in self.lines[seen:]:
                    if re.search(pattern, line):
                        return line
                seen = len(self.lines)
                if self.proc.poll() is not None and seen == len(self.lines):
                    break
                self._cond.wait(0.2)
        raise AssertionError(f"no line matching {pattern!r}; last output:\n"
                             + "".join(self.lines[-40:]))

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)


def _until(pred: Any, timeout: float, what: str, lines: Lines | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if lines is not None and lines.proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = lines.text()[-4000:] if lines is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def _metrics(base: str) -> dict[str, float]:
    code, text = _call(f"{base}/metrics")
    assert code == 200
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if not s.labels}


def _tradingd() -> list[str]:
    script = Path(sys.executable).with_name("tradingd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon.cli"]


class TestOperatorSurfaceOnEmulator:
    def test_surface_when_live_on_emulator_then_probes_metrics_and_token_guarded_halt(
        self, tmp_path: Path
    ) -> None:
        # Arrange: the emulator replays a demo day as live minutes once we subscribe
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=12, seed=21)
        symbols = [f"DEMO{i:02d}" for i in range(12)]
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--bars", str(csv),
             "--bar-interval", "0.04", "--rebase-now", "--wait-subscriber"],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        daemon: subprocess.Popen[str] | None = None
        emu_out = Lines(emu)
        try:
            m = re.search(r"127\.0\.0\.1:(\d+)", emu_out.wait("alpaca emulator on", 30))
            assert m is not None
            emu_base = f"http://127.0.0.1:{m.group(1)}"
            daemon = subprocess.Popen(
                [*_tradingd(), "run", "--broker", "alpaca", "--state-dir", str(tmp_path / "s")],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=_env(APCA_API_BASE_URL=emu_base, APCA_API_DATA_URL=emu_base,
                         TRADINGD_FEED__SOURCE="alpaca",
                         TRADINGD_FEED__SYMBOLS=json.dumps(symbols),
                         TRADINGD_HTTP__LISTEN="127.0.0.1:0",  # the port it binds is logged
                         # an always-open emulator: the trading day is not under test here
                         TRADINGD_SESSION__LIFECYCLE="false",
                         TRADINGD_HTTP__TOKEN=TOKEN))
            out = Lines(daemon)
            listening = json.loads(out.wait(r'"event":"http.listening"', 60))
            base = f"http://127.0.0.1:{listening['port']}"

            def snapshot() -> dict[str, Any]:
                return _json(f"{emu_base}/_control/snapshot")

            # Act 1: the probes come up
            _until(lambda: _call(f"{base}/healthz")[0] == 200, 60, "/healthz 200", out)
            _until(lambda: _call(f"{base}/readyz")[0] == 200, 60, "/readyz 200", out)
            ready = json.loads(_call(f"{base}/readyz")[1])
            _until(lambda: len(snapshot()["orders"]) >= 3, 60, "orders at the emulator")

            # Act 2: halts without the token, or with a wrong one, are refused
            refused = [_call(f"{base}/api/halt", method="POST"),
                       _call(f"{base}/api/halt", method="POST", token="wrong-token-0123456789")]
            state_after_refusals = _json(f"{base}/api/status")["trading_state"]

            # Act 3: the real halt
            asked = time.monotonic()
            halt_code, halt_body = _call(f"{base}/api/halt", method="POST", token=TOKEN,
                                         body={"why": "process test"})
            _until(lambda: _json(f"{base}/api/status")["trading_state"] == "HALTED", 2.0,
                   "HALTED within 2 s")
            took = time.monotonic() - asked
            known = _json(f"{base}/api/orders?limit=1000")
            known_ids = {o["client_order_id"] for o in known["today"] + known["open"]}

            # the day plays out; the daemon settles what was in flight
            emu_out.wait("bars done", 120)
            _until(lambda: not [o for o in snapshot()["orders"] if o["status"] in OPEN], 30,
                   "no open orders at the emulator")
            time.sleep(3.0)  # the feed's last minute reaches the books
            snap = snapshot()
            metrics = _metrics(base)
            status = _json(f"{base}/api/status")
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
            out.wait("http.stopped", 10)
        finally:
            for p in (daemon, emu):
                if p is not None and p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)
        log = out.text()
        (tmp_path / "daemon.log").write_text(log)  # kept by pytest for a failing run
        # Assert: probes
        assert ready == {"ready": True, "reasons": []}
        # refusals changed nothing
        assert [c for c, _ in refused] == [401, 403]
        assert state_after_refusals == "ACTIVE"
        # the halt took effect at once, and no order followed it
        assert halt_code == 200 and json.loads(halt_body)["state"] == "HALTED"
        assert took < 2.0
        emulator_ids = {o["client_order_id"] for o in snap["orders"]}
        assert emulator_ids <= known_ids, emulator_ids - known_ids
        assert status["trading_state"] == "HALTED"
        assert status["counters"]["rejects_by_reason"].get("TRADING_HALTED", 0) > 0
        # metrics equal the emulator's own books
        assert metrics["tradingd_orders_submitted_total"] == len(snap["orders"])
        assert metrics["tradingd_fills_total"] == len(snap["executions"])
        emu_equity = Decimal(snap["account"]["equity"]).quantize(Decimal("0.01"))
        assert Decimal(repr(metrics["tradingd_equity_dollars"])).quantize(
            Decimal("0.01")) == emu_equity
        assert Decimal(repr(metrics["tradingd_cash_dollars"])).quantize(
            Decimal("0.01")) == Decimal(snap["account"]["cash"]).quantize(Decimal("0.01"))
        assert metrics["tradingd_broker_connected"] == 1
        # the process stopped cleanly; no secret in its output
        assert daemon.returncode == 0, log[-3000:]
        assert TOKEN not in log and SECRET not in log
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        refusals = [e for e in lines if e["event"] == "http.refused"]
        assert [(e["status"], e["reason"]) for e in refusals] == [
            (401, "TOKEN_MISSING"), (403, "TOKEN_WRONG")]
