"""``tradingd run`` as a real process (uvloop, the shipped config and Mosquitto set-up with
passwords and ACLs), taking signals over MQTT: every signal published is journaled and
decided exactly once, bad input is refused with its reason, and a stop says offline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine.journal import JOURNAL_FILE
from tests.signals.helpers import Collector, client, eventually, publish_all, write_bars
from tests.signals.mosquitto import Mosquitto
from tests.signals.mqtt_fixtures import (
    DAEMON_PASSWORD,
    DAEMON_USER,
    OPERATOR_PASSWORD,
    OPERATOR_USER,
    PRODUCER_PASSWORD,
    PRODUCER_USER,
)

pytestmark = pytest.mark.mqtt

REPO = Path(__file__).resolve().parents[2]
OPEN = datetime(2024, 3, 4, 14, 35, tzinfo=UTC)  # 09:35 New York, a Monday
SIGNALS = 3000


def spawn(tmp: Path, broker: Mosquitto) -> subprocess.Popen[bytes]:
    # One bar a minute of real time: the replay clock stays at the first bar while the
    # test runs, so signals stamped with it are fresh.
    bars = write_bars(tmp / "bars.csv", OPEN, 30, {"AAPL": 150.0, "MSFT": 300.0})
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "TRADINGD_SIGNALS__MQTT__ENABLED": "true", "TRADINGD_MQTT_URL": broker.url,
           "TRADINGD_MQTT_USERNAME": DAEMON_USER, "TRADINGD_MQTT_PASSWORD": DAEMON_PASSWORD,
           "TRADINGD_SIGNALS__MQTT__HEARTBEAT_SECS": "0.2",
           "TRADINGD_SIGNALS__DEMO__ENABLED": "false"}
    with (tmp / "daemon.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--replay", str(bars), "--speed", "1",
             "--state-dir", str(tmp / "state")],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)


def journal_counts(state: Path) -> dict[str, int]:
    path = state / JOURNAL_FILE
    if not path.exists():
        return {}
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT type, count(*) FROM journal GROUP BY type").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}
    finally:
        db.close()


def singles(ts: str, n: int) -> Iterator[bytes]:
    """AAPL and MSFT (traded), then one symbol each: every signal needs an order, so each
    meets the gate once (approved or denied), however the earlier ones went."""
    for i in range(n):
        sym, price = {0: ("AAPL", 150.0), 1: ("MSFT", 300.0)}.get(i, (f"Z{i:04d}", 50.0))
        yield json.dumps({"id": f"p-{i}", "symbol": sym, "strength": 0.2, "price": price,
                          "ts": ts, "source": "proc"}).encode()


class TestDaemonProcess:
    async def test_signals_over_mqtt_when_daemon_runs_then_each_decided_once_and_stop_offline(
        self, tmp_path: Path, mosquitto_auth: Mosquitto
    ) -> None:
        # Arrange: the daemon, and an operator watching everything it publishes
        broker = mosquitto_auth
        proc = spawn(tmp_path, broker)
        log = tmp_path / "daemon.log"
        try:
            async with Collector(broker, ("tradingd/#",), username=OPERATOR_USER,
                                 password=OPERATOR_PASSWORD) as seen:
                await seen.wait_for(lambda: any(
                    b.get("online") for b in seen.on("tradingd/status")), timeout=60)
                (status,) = [b for b in seen.on("tradingd/status") if b.get("online")]
                ts: str = status["ts"]  # the daemon's clock: the first bar
                # Act: a burst of single signals, one repeated id, one invalid payload
                async with client(broker, username=PRODUCER_USER,
                                  password=PRODUCER_PASSWORD) as producer:
                    await publish_all(producer, "tradingd/signals", singles(ts, SIGNALS))
                    await publish_all(producer, "tradingd/signals", [
                        next(singles(ts, 1)),  # "p-0" again
                        b'{"id": "bad-1", "symbol": "AAPL", "strength": 7, "price": 150.0,'
                        b' "ts": "' + ts.encode() + b'", "source": "proc"}'])
                await seen.wait_for(lambda: len(seen.on("tradingd/rejects")) == 1)
                await eventually(lambda: decided(tmp_path) == SIGNALS, timeout=60)
                await seen.wait_for(lambda: last_beat(seen)["received"] == SIGNALS + 2)
                beat = last_beat(seen)
                # Stop as systemd does
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-3000:]
                await seen.wait_for(lambda: seen.on("tradingd/status")[-1]["online"] is False)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # Assert: each signal journaled and decided exactly once; the rest refused
        counts = journal_counts(tmp_path / "state")
        assert counts["Signal"] == SIGNALS
        assert counts.get("OrderApproved", 0) + counts.get("OrderDenied", 0) == SIGNALS
        assert counts["OrderApproved"] >= 1 and counts["OrderSubmitted"] >= 1
        (reject,) = seen.on("tradingd/rejects")
        assert (reject["reason"], reject["signal_id"]) == ("OUT_OF_RANGE", "bad-1")
        assert (beat["accepted_signals"], beat["duplicates"], beat["rejected"]) == (
            SIGNALS, 1, {"OUT_OF_RANGE": 1})
        lines = [json.loads(line) for line in log.read_text().splitlines()
                 if line.startswith("{")]
        events = [e["event"] for e in lines]
        assert events.count("signal.duplicate") == 1 and "mqtt.task_failed" not in events
        assert [e["reason"] for e in lines if e["event"] == "signal.reject"] == ["OUT_OF_RANGE"]
        approved = seen.on("tradingd/events/orders")
        assert {o["type"] for o in approved} >= {"OrderApproved", "OrderSubmitted"}


def last_beat(seen: Collector) -> dict[str, Any]:
    beats = seen.on("tradingd/events/heartbeat")
    return beats[-1] if beats else {"received": 0}


def decided(tmp: Path) -> int:
    counts: dict[str, Any] = journal_counts(tmp / "state")
    return int(counts.get("OrderApproved", 0) + counts.get("OrderDenied", 0))
