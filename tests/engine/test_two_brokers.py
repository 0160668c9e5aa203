"""Two broker accounts in one daemon, everything a real process: ``tradingd run`` with an
Alpaca account (the loopback emulator) and an Interactive Brokers account (the fake TWS).

The test drives the market minute by minute: each minute it gives the fake TWS the
minute's prices and has the emulator publish the minute's bars on its data stream, the
daemon's only feed. Along the way: routing by symbol, failover while IB has lost its
servers (TWS error 1100), a global gross-exposure limit over both accounts,
``tradingd halt --account ib`` and ``tradingd emergency-stop`` as the operator types
them. At the end each account's books equal its broker's, and the totals are their sums.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from signals import demodata
from tests.alpaca_emulator.process import EmulatorProcess
from tests.data import REPO
from tests.fake_tws.process import FakeTwsProcess
from tests.kit import process_env

pytestmark = pytest.mark.slow

KEY, SECRET = "PKTWOBROKERS0000", "two-brokers-secret-canary-0123456789"
SYMBOLS = [f"DEMO{i:02d}" for i in range(12)]
ALPACA_LISTED, IB_LISTED = SYMBOLS[:4], SYMBOLS[4:8]  # the rest: preferred (ib)
GLOBAL_GROSS = 0.08


def _env(base: str) -> dict[str, str]:
    env = process_env()
    env.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET, APCA_API_BASE_URL=base,
               APCA_API_DATA_URL=base, PYTHONUNBUFFERED="1")
    return env


def _config(path: Path, tws_port: int) -> Path:
    path.write_text(yaml.safe_dump({
        "accounts": [
            {"name": "alpaca", "kind": "alpaca", "symbols": ALPACA_LISTED},
            {"name": "ib", "kind": "ib", "symbols": IB_LISTED,
             "broker": {"port": tws_port, "client_id": 9, "heartbeat_secs": 2,
                        "reconnect_backoff_secs": 0.2, "reconnect_backoff_max_secs": 1}},
        ],
        "routing": {"preferred": "ib", "failover": True},
        "global_risk": {"max_gross_exposure": GLOBAL_GROSS},
        "feed": {"symbols": SYMBOLS},
        "risk": {"max_orders_per_symbol_day": 100, "max_orders_per_day": 10_000,
                 "signal_threshold": 0.1, "max_position_pct": 0.05,
                 "max_orders_per_second": 1000},
        "signals": {"demo": {"lookback": 3, "every_bars": 2}},
        "daemon": {"reconcile_interval_secs": 86400, "shutdown_grace_secs": 10},
        # The emulator is always open: no trading day on the calendar (test_live_sessions).
        "session": {"lifecycle": False},
    }))
    return path


def _tradingd(state: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "daemon.cli", *args, "--state-dir",
                           str(state)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


class _Log:
    """The daemon's JSON lines, read as they come."""

    def __init__(self, path: Path) -> None:
        self.path, self.records = path, []  # type: ignore[var-annotated]
        self._pos = 0

    def read(self) -> list[dict[str, Any]]:
        with self.path.open() as fh:
            fh.seek(self._pos)
            chunk = fh.read()
            cut = chunk.rfind("\n") + 1
            self._pos += cut
        new = [json.loads(line) for line in chunk[:cut].splitlines() if line.startswith("{")]
        self.records.extend(new)
        return new

    def wait(self, event: str, timeout: float, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in [*self.records, *self.read()]:
                if r["event"] == event and all(r.get(k) == v for k, v in fields.items()):
                    return r
            time.sleep(0.05)
        raise AssertionError(f"no {event} {fields} in the daemon's log")


def _orders_by_symbol(snapshot: dict[str, Any], key: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for o in snapshot["orders"]:
        counts[o[key]] += 1
    return counts


class TestTwoBrokers:
    def test_session_when_alpaca_and_ib_then_routed_failed_over_limited_controlled_and_books_equal(
            self, tmp_path: Path) -> None:
        # Arrange: a demo day, one minute at a time
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=len(SYMBOLS), seed=13)
        bars = pd.read_csv(csv)
        minutes = [g.set_index("symbol")["close"] for _, g in bars.groupby("timestamp")]
        first = {s: repr(float(p)) for s, p in minutes[0].items()}
        state = tmp_path / "state"
        emu = EmulatorProcess(tmp_path / "emulator.log", "--bars", str(csv), "--rebase-now",
                              "--key-id", KEY, "--secret-key", SECRET)
        tws = FakeTwsProcess(first, tmp_path / "tws.log")
        env = _env(emu.base)
        config = _config(tmp_path / "two.yaml", tws.port)
        log = _Log(tmp_path / "daemon.log")
        daemon: subprocess.Popen[bytes] | None = None
        try:
            with (tmp_path / "daemon.log").open("wb") as out:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
                     "--state-dir", str(state)], cwd=REPO, env=env, stdout=out,
                    stderr=subprocess.STDOUT)
            log.wait("daemon.ready", 90)

            def play(n: int) -> None:
                for closes in minutes[play.at:play.at + n]:  # type: ignore[attr-defined]
                    tws.call("set_prices", prices={s: repr(float(p)) for s, p in closes.items()})
                    emu.call("advance")
                    time.sleep(0.08)
                play.at += n  # type: ignore[attr-defined]

            play.at = 0  # type: ignore[attr-defined]
            # Act 1: both accounts trade their own symbols
            play(60)
            routed_alpaca = _orders_by_symbol(emu.snapshot(), "symbol")
            routed_ib = _orders_by_symbol(tws.snapshot(), "symbol")
            # Act 2: IB loses its servers: its flat symbols fail over to Alpaca
            tws.call("link", code=1100)
            log.wait("ib.link_lost", 30)
            ib_during = sum(_orders_by_symbol(tws.snapshot(), "symbol").values())
            play(40)
            log.wait("route.failover", 30, preferred="ib", to="alpaca")
            ib_after_outage = sum(_orders_by_symbol(tws.snapshot(), "symbol").values())
            tws.call("link", code=1102)
            log.wait("reconcile.ready", 60)
            play(40)
            # Act 3: the operator halts IB only, then stops everything
            halted = _tradingd(state, env, "halt", "--account", "ib", "--why", "test")
            status = _tradingd(state, env, "status", "--json")
            play(20)
            stopped = _tradingd(state, env, "emergency-stop", "--why", "end of test")
            final = _tradingd(state, env, "status", "--json")
            time.sleep(1.0)  # cancels reach both brokers
            daemon.send_signal(15)
            assert daemon.wait(90) == 0
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.kill()
            alpaca_books, ib_books = emu.snapshot(), tws.snapshot()
            emu.close()
            tws.close()
        log.read()
        status_file = json.loads((state / "status.json").read_text())

        # Assert: routing by symbol before the outage
        assert set(routed_alpaca) <= set(ALPACA_LISTED), routed_alpaca
        assert routed_alpaca and routed_ib
        assert set(routed_ib) <= set(SYMBOLS) - set(ALPACA_LISTED), routed_ib
        # ... failover: no order reached IB while it was down; flat symbols went to Alpaca
        assert ib_after_outage == ib_during
        failovers = [r for r in log.records if r["event"] == "route.failover"]
        assert failovers and all(r["symbol"] not in ALPACA_LISTED for r in failovers)
        at_alpaca = _orders_by_symbol(alpaca_books, "symbol")
        assert set(at_alpaca) - set(ALPACA_LISTED), "no failed-over symbol traded at Alpaca"
        # ... a symbol is never held at both brokers
        held_alpaca = {s for s, p in alpaca_books["positions"].items() if Decimal(p["qty"])}
        held_ib = {s for s, p in ib_books["positions"].items() if Decimal(str(p["qty"]))}
        assert not held_alpaca & held_ib
        # ... the global gross limit held over both accounts at every status write
        marks = [r for r in log.records if r["event"] == "gate.reduce"
                 and r["rule"] == "GLOBAL_GROSS_EXPOSURE"] + [
                     r for r in log.records if r["event"] == "gate.reject"
                     and r["reason"] == "GLOBAL_GROSS_EXPOSURE"]
        assert marks, "the global limit never bit"
        total_gross = Decimal(status_file["gross_exposure"])
        total_equity = Decimal(status_file["equity"])
        assert total_gross <= Decimal(repr(GLOBAL_GROSS)) * total_equity * Decimal("1.05")
        # ... the controls: halt one account, emergency-stop all
        assert halted["accounts"]["ib"]["state"] == "HALTED"
        assert status["accounts"]["ib"]["trading_state"] == "HALTED"
        assert status["accounts"]["alpaca"]["trading_state"] == "ACTIVE"
        assert set(stopped["accounts"]) == {"alpaca", "ib"}
        assert {a["trading_state"] for a in final["accounts"].values()} == {"HALTED"}
        # ... books equal each broker's, totals are their sums
        accounts = status_file["accounts"]
        ours_alpaca = {s: p["qty"] for s, p in accounts["alpaca"]["positions"].items()}
        assert ours_alpaca == {s: int(Decimal(p["qty"])) for s, p in
                               alpaca_books["positions"].items() if Decimal(p["qty"])}
        assert Decimal(accounts["alpaca"]["cash"]) == Decimal(alpaca_books["account"]["cash"])
        ours_ib = {s: p["qty"] for s, p in accounts["ib"]["positions"].items()}
        assert ours_ib == {s: int(Decimal(str(p["qty"]))) for s, p in
                           ib_books["positions"].items() if Decimal(str(p["qty"]))}
        assert Decimal(accounts["ib"]["cash"]) == Decimal(ib_books["account"]["cash"])
        assert Decimal(status_file["cash"]) == (Decimal(accounts["alpaca"]["cash"])
                                                + Decimal(accounts["ib"]["cash"])).quantize(
                                                    Decimal("0.01"))
        assert KEY not in (tmp_path / "daemon.log").read_text()
