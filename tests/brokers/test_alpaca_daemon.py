"""``tradingd run --broker alpaca`` as a real process against the emulator as a process.

The emulator replays a demo day over its market-data websocket as live minutes; the
daemon trades it through the real alpaca-py SDK (REST orders, the JSON trade stream, the
msgpack data stream). At the end the daemon's books must equal the emulator's exactly.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from signals import demodata
from tests.daemon.live_kit import Proc
from tests.daemon.lives import unit_exec_start
from tests.data import REPO
from tests.kit import process_env

pytestmark = pytest.mark.slow

KEY, SECRET = "PKTESTE2E0000000", "e2e-secret-canary-0123456789"


def _env(**extra: str) -> dict[str, str]:
    env = process_env()
    env.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET, **extra)
    return env


def _snapshot(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/_control/snapshot", timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def _control(base: str, name: str, **kwargs: Any) -> None:
    req = urllib.request.Request(f"{base}/_control/{name}", data=json.dumps(kwargs).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["ok"]


def _until(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class TestDaemonOnAlpacaEmulator:
    def test_run_when_broker_alpaca_then_books_equal_emulator_exactly(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=12, seed=21)
        symbols = [f"DEMO{i:02d}" for i in range(12)]
        # Output of both is read in threads (live_kit.Proc): a full pipe never stalls them
        # and a silent process never hangs the test.
        emu = Proc([sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--bars",
                    str(csv), "--bar-interval", "0.03", "--rebase-now", "--wait-subscriber",
                    "--fill-parts", "2"], _env(), tmp_path / "emulator.log")
        daemon: Proc | None = None
        try:
            _, on = emu.wait_line("alpaca emulator on", 30)
            port = re.search(r"127\.0\.0\.1:(\d+)", on)
            assert port is not None
            base = f"http://127.0.0.1:{port.group(1)}"
            state = tmp_path / "state"
            # The systemd unit's own command with the shipped config: live by default.
            daemon = Proc(unit_exec_start(state),
                          _env(APCA_API_BASE_URL=base, APCA_API_DATA_URL=base,
                               TRADINGD_FEED__SYMBOLS=json.dumps(symbols),
                               # The emulator's market is always open: the calendar's trading
                               # day is not under test here (test_live_sessions.py).
                               TRADINGD_SESSION__LIFECYCLE="false"),
                          tmp_path / "daemon.log")
            # Act: the emulator replays the day once the daemon has subscribed
            emu.wait_line("bars done", 120)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                snap = _snapshot(base)
                if not [o for o in snap["orders"] if o["status"] in
                        ("new", "accepted", "partially_filled", "pending_new")]:
                    break
                time.sleep(0.2)
            time.sleep(3.0)  # the feed's last minute is flushed, its orders trade
            daemon.proc.send_signal(signal.SIGTERM)
            code = daemon.wait(60)
            snap = _snapshot(base)  # the broker's books once the daemon has stopped
        finally:
            for p in (daemon, emu):
                if p is not None and p.proc.poll() is None:
                    p.proc.terminate()
                    p.proc.wait(timeout=10)
        out = "".join(daemon.lines)  # also in daemon.log, kept by pytest for a failing run
        (tmp_path / "emulator.json").write_text(json.dumps(snap, indent=1))
        # Assert
        assert code == 0, out[-3000:]
        snap_orders = snap["orders"]
        assert snap_orders, "orders must arrive at the emulator"
        cids = Counter(o["client_order_id"] for o in snap_orders)
        assert max(cids.values()) == 1, "no duplicate orders"
        assert {o["symbol"] for o in snap_orders} <= set(symbols), "only listed symbols"
        status = json.loads((state / "status.json").read_text())
        emu_positions = {s: int(Decimal(p["qty"])) for s, p in snap["positions"].items()
                         if Decimal(p["qty"])}
        ours = {s: p["qty"] for s, p in status["positions"].items()}
        assert ours == emu_positions
        assert Decimal(status["cash"]) == Decimal(snap["account"]["cash"])
        for sym, p in status["positions"].items():
            assert Decimal(p["avg_price"]) == Decimal(
                snap["positions"][sym]["avg_entry_price"]).quantize(Decimal("0.0001"))
        fills = [json.loads(line) for line in out.splitlines()
                 if line.startswith("{") and '"order.' in line and 'fill' in line]
        assert sum(1 for f in fills if f["event"] in ("order.filled", "order.partial_fill")) \
            == len(snap["executions"]), "every execution came back over the stream, once"
        assert KEY not in out and SECRET not in out


class TestRefusalsOnAlpacaEmulator:
    def test_run_when_three_validation_refusals_then_each_posted_once_and_trading_goes_on(
        self, tmp_path: Path
    ) -> None:
        # Arrange: the emulator (a process) replays a day slowly; the daemon (a process)
        # trades it with the shipped config.
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=12, seed=21)
        symbols = [f"DEMO{i:02d}" for i in range(12)]
        emu = Proc([sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--bars",
                    str(csv), "--bar-interval", "0.1", "--rebase-now", "--wait-subscriber"],
                   _env(), tmp_path / "emulator.log")
        daemon: subprocess.Popen[str] | None = None
        log = tmp_path / "daemon.log"
        try:
            port = re.search(r"127\.0\.0\.1:(\d+)", emu.wait_line("alpaca emulator on", 30)[1])
            assert port is not None
            base = f"http://127.0.0.1:{port.group(1)}"
            state = tmp_path / "state"
            with log.open("w") as out:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "daemon.cli", "run", "--broker", "alpaca",
                     "--state-dir", str(state)],
                    cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                    env=_env(APCA_API_BASE_URL=base, APCA_API_DATA_URL=base,
                             TRADINGD_FEED__SOURCE="alpaca",
                             TRADINGD_FEED__SYMBOLS=json.dumps(symbols)))
            _until(lambda: len(_snapshot(base)["order_posts"]) >= 3, 120, "first orders")
            # Act: the next three POSTs are refused with the duplicate's own code
            _control(base, "refuse_next_orders", n=3, status=422, code=40010001,
                     message="qty must be a whole number of shares")
            _until(lambda: sum(p["status"] == 422 for p in _snapshot(base)["order_posts"]) >= 3,
                   120, "three refusals")
            refused_at = len(_snapshot(base)["order_posts"])
            _until(lambda: len(_snapshot(base)["order_posts"]) >= refused_at + 3, 120,
                   "orders after the refusals")
            daemon.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            code = daemon.wait(60)
            stop_secs = time.monotonic() - t0
            snap = _snapshot(base)
        finally:
            for p in (daemon, emu.proc):
                if p is not None and p.poll() is None:
                    p.terminate()
                    p.wait(timeout=10)
        out_text = log.read_text()
        (tmp_path / "emulator.json").write_text(json.dumps(snap, indent=1))
        # Assert: exit 0 within the shutdown grace (10 s), nothing waited out
        assert code == 0, out_text[-3000:]
        assert stop_secs < 10
        assert '"daemon.shutdown_timeout"' not in out_text
        posts = snap["order_posts"]
        refused = [p["cid"] for p in posts if p["status"] == 422]
        assert len(refused) == 3
        per_cid = Counter(p["cid"] for p in posts)
        assert all(per_cid[c] == 1 for c in refused), "a refused id was POSTed again"
        assert not any(o["client_order_id"] in refused for o in snap["orders"])
        rejections = [json.loads(line) for line in out_text.splitlines()
                      if line.startswith("{") and '"order.rejected"' in line]
        assert sorted(r["client_order_id"] for r in rejections) == sorted(refused)
        assert {r["code"] for r in rejections} == {40010001}
        assert '"order.ambiguous"' not in out_text
        # trading went on: orders after the refusals reached the broker and filled
        assert len(posts) >= refused_at + 3
        status = json.loads((state / "status.json").read_text())
        assert status["open_orders"] == [] or all(
            o["status"] != "pending_new" for o in status["open_orders"])
        assert status["counters"]["broker_rejects"] == 3
        emu_positions = {s: int(Decimal(p["qty"])) for s, p in snap["positions"].items()
                         if Decimal(p["qty"])}
        assert {s: p["qty"] for s, p in status["positions"].items()} == emu_positions
        assert Decimal(status["cash"]) == Decimal(snap["account"]["cash"])
