"""Crash test: the daemon as a real process, SIGKILLed at random points of a replay and
restarted each time, must never duplicate an order, lose a fill, or leave its books
different from the broker's (paper broker, with its own SQLite store)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from brokers._paper_store import PaperStore
from engine.journal import JOURNAL_FILE, Journal, JournalRow
from tests.daemon.lives import kill_lives
from tests.data import SAMPLE_CSV, require

REPO = Path(__file__).resolve().parents[2]
KILLS = 20
SPEED = "1500"  # a 1-minute bar every 40 ms: each life replays a few dozen bars
# Busy, short-lived lives: signals soon after a (cold) restart, many orders, partial
# fills against bar volume (orders stay open across kills), delayed acknowledgements.
ENV = {
    "TRADINGD_SIGNALS__DEMO__LOOKBACK": "3",
    "TRADINGD_SIGNALS__DEMO__EVERY_BARS": "2",
    "TRADINGD_RISK__MAX_ORDERS_PER_SYMBOL_DAY": "1000",
    "TRADINGD_RISK__MAX_ORDERS_PER_DAY": "100000",
    "TRADINGD_BROKER__PAPER__MAX_FILL_VOLUME_PCT": "0.0005",
    "TRADINGD_BROKER__PAPER__ACK_LATENCY_MS": "15",
    "TRADINGD_HTTP__LISTEN": "127.0.0.1:0",  # never the fixed port of a daemon beside us
    "PYTHONUNBUFFERED": "1",
}


def _replay_csv(tmp_path: Path) -> Path:
    frame = pd.read_csv(require(SAMPLE_CSV))
    frame = frame[frame["timestamp"].str.startswith("2018-02-16T")]
    out = tmp_path / "day.csv"
    frame.to_csv(out, index=False)
    return out


def _spawn(replay: Path, state: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--replay", str(replay),
             "--speed", SPEED, "--state-dir", str(state)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **ENV, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
class TestCrash:
    def test_sigkill_at_random_points_then_exactly_once_and_books_match_broker(
            self, tmp_path: Path) -> None:
        # Arrange
        replay, state, logs = _replay_csv(tmp_path), tmp_path / "state", tmp_path / "logs"
        logs.mkdir()
        rng = random.Random(int(os.environ.get("CRASH_SEED", "20240301")))
        # Act: kill it again and again, then let one life finish the replay
        ends = kill_lives(lambda log: _spawn(replay, state, log), logs, rng, KILLS)
        final = _spawn(replay, state, logs / "final.log")
        assert final.wait(120) == 0, (logs / "final.log").read_text()[-2000:]
        # Assert
        assert ends.count("killed") >= KILLS - 2, ends
        stored = PaperStore.open(state / "paper_account.sqlite")
        account = stored.load()
        stored.close()
        assert account is not None
        journal = Journal(state / JOURNAL_FILE).open()
        intents = list(journal.rows(types=("OrderIntent",)))
        fills = [r.payload["fill"] for r in journal.rows(types=("OrderFilled",))]
        journal.close()
        self._exactly_once(intents, fills, account.orders, account.fills)
        self._books_match(state, account.cash, account.positions)
        self._no_drift(logs)

    @staticmethod
    def _exactly_once(intents: list[JournalRow], fills: list[dict[str, Any]],
                      broker_orders: list[Any], broker_fills: list[Any]) -> None:
        per_cid = Counter(r.client_order_id for r in intents)
        assert [c for c, n in per_cid.items() if n > 1] == []
        signal_of = {r.client_order_id: (r.payload.get("signal") or {}).get("id")
                     for r in intents}
        broker_cids = [o.client_order_id for o in broker_orders]
        assert broker_orders, "the replay placed no order at all"
        # every broker order is in the journal, and no signal reached the broker twice
        assert set(broker_cids) <= set(per_cid)
        per_signal = Counter(signal_of[c] for c in broker_cids if signal_of[c])
        assert [s for s, n in per_signal.items() if n > 1] == []
        # no fill lost, none booked twice
        journaled = Counter(f["execution_id"] for f in fills)
        assert sorted(journaled) == sorted(f.execution_id for f in broker_fills)
        assert max(journaled.values()) == 1

    @staticmethod
    def _books_match(state: Path, cash: Decimal, positions: list[Any]) -> None:
        status = json.loads((state / "status.json").read_text())
        ours = {s: p["qty"] for s, p in status["positions"].items()}
        assert ours == {p.symbol: p.qty for p in positions if p.qty}
        assert Decimal(status["cash"]) == cash.quantize(Decimal("0.0001"))

    @staticmethod
    def _no_drift(logs: Path) -> None:
        for log in sorted(logs.iterdir()):
            text = log.read_text(errors="replace")
            assert '"reconcile.drift"' not in text, log.name
            assert '"bus.handler_failed"' not in text, log.name
