"""Crash test against the Alpaca emulator: the daemon (``--broker alpaca``, live bars from
the emulator's data stream) is SIGKILLed at random points and restarted 20 times while the
emulator, a separate process, keeps trading the day. Afterwards: no duplicate order at the
broker, no lost or double fill, every broker order in the journal, books equal."""

from __future__ import annotations

import json
import os
import random
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

from engine.journal import JOURNAL_FILE, Journal
from signals import demodata
from tests.daemon.lives import kill_lives, wait_for
from tests.data import REPO
from tests.kit import process_env

KILLS = 20
SYMBOLS = [f"DEMO{i:02d}" for i in range(12)]
KEYS = {"APCA_API_KEY_ID": "EMUKEY", "APCA_API_SECRET_KEY": "EMUSECRET"}
ENV = {
    # The emulator's market is always open: the calendar's trading day is not under test
    # here (tests/daemon/test_live_sessions.py drives it on a faked clock).
    "TRADINGD_SESSION__LIFECYCLE": "false",
    "TRADINGD_FEED__SOURCE": "alpaca",
    "TRADINGD_FEED__SYMBOLS": json.dumps(SYMBOLS),
    "TRADINGD_SIGNALS__DEMO__LOOKBACK": "3",
    "TRADINGD_SIGNALS__DEMO__EVERY_BARS": "2",
    "TRADINGD_RISK__MAX_ORDERS_PER_SYMBOL_DAY": "1000",
    "TRADINGD_RISK__MAX_ORDERS_PER_DAY": "100000",
    "PYTHONUNBUFFERED": "1",
}


def _clean_env(**extra: str) -> dict[str, str]:
    env = process_env()
    return {**env, **KEYS, **extra}


def _snapshot(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/_control/snapshot", timeout=10) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def _spawn(base: str, state: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--broker", "alpaca",
             "--state-dir", str(state)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env=_clean_env(APCA_API_BASE_URL=base, APCA_API_DATA_URL=base, **ENV))


@pytest.mark.slow
class TestCrashOnAlpaca:
    def test_sigkill_at_random_points_when_broker_alpaca_then_exactly_once_and_books_match(
        self, tmp_path: Path
    ) -> None:
        # Arrange: the emulator replays a demo day as live minutes, 0.12 s each
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=len(SYMBOLS), seed=9)
        emu_log = (tmp_path / "emulator.log").open("w")
        emu = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--bars", str(csv),
             "--bar-interval", "0.12", "--rebase-now", "--wait-subscriber",
             "--fill-parts", "2"],
            cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE, stderr=emu_log, text=True)
        state, logs = tmp_path / "state", tmp_path / "logs"
        logs.mkdir()
        rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
        try:
            assert emu.stdout is not None
            port = re.search(r"127\.0\.0\.1:(\d+)", emu.stdout.readline())
            assert port is not None
            base = f"http://127.0.0.1:{port.group(1)}"
            # Act: kill the daemon again and again while the emulator trades on
            ends = kill_lives(lambda log: _spawn(base, state, log), logs, rng, KILLS,
                              startup=(0.3, 1.5), running=(0.1, 1.5))
            # a last life trades until the emulator's day is over, then stops cleanly
            final = _spawn(base, state, logs / "final.log")
            assert wait_for(logs / "final.log", '"daemon.ready"', final, 30)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and emu.poll() is None:
                line = emu.stdout.readline()
                if "bars done" in line:
                    break
            time.sleep(3.0)  # the last minute is flushed and its orders trade
            final.send_signal(signal.SIGTERM)
            assert final.wait(60) == 0, (logs / "final.log").read_text()[-3000:]
            snap = _snapshot(base)
            (tmp_path / "emulator.json").write_text(json.dumps(snap, indent=1))  # diagnosis
        finally:
            if emu.poll() is None:
                emu.terminate()
                emu.wait(10)
            emu_log.close()
        # Assert
        assert ends.count("killed") >= KILLS - 2, ends
        self._exactly_once(state, snap)
        self._books_match(state, snap)
        for log in sorted(logs.iterdir()):
            text = log.read_text(errors="replace")
            assert '"reconcile.drift"' not in text, log.name
            assert '"bus.handler_failed"' not in text, log.name

    @staticmethod
    def _exactly_once(state: Path, snap: dict[str, Any]) -> None:
        journal = Journal(state / JOURNAL_FILE).open()
        intents = list(journal.rows(types=("OrderIntent",)))
        fills = [r.payload["fill"] for r in journal.rows(types=("OrderFilled",))]
        journal.close()
        orders = snap["orders"]
        assert orders, "the session placed no order at all"
        per_cid = Counter(o["client_order_id"] for o in orders)
        assert max(per_cid.values()) == 1, "a client_order_id twice at the broker"
        journaled = {r.client_order_id for r in intents}
        assert set(per_cid) <= journaled, "every broker order is in the journal"
        signal_of = {r.client_order_id: (r.payload.get("signal") or {}).get("id")
                     for r in intents}
        per_signal = Counter(signal_of[c] for c in per_cid if signal_of.get(c))
        assert max(per_signal.values()) == 1, "a signal reached the broker twice"
        # A fill is (order, cumulative quantity after it): the emulator's fill list
        # names executions differently from its stream, as Alpaca may.
        ours = Counter((f["client_order_id"], f["cum_qty"]) for f in fills)
        theirs = Counter((e["client_order_id"], int(e["cum_qty"])) for e in snap["executions"])
        assert ours.keys() == theirs.keys(), "no fill lost"
        assert max(ours.values()) == 1, "no fill booked twice"

    @staticmethod
    def _books_match(state: Path, snap: dict[str, Any]) -> None:
        status = json.loads((state / "status.json").read_text())
        ours = {s: p["qty"] for s, p in status["positions"].items()}
        theirs = {s: int(Decimal(p["qty"])) for s, p in snap["positions"].items()
                  if Decimal(p["qty"])}
        assert ours == theirs
        assert Decimal(status["cash"]) == Decimal(snap["account"]["cash"])
