"""Three trading days back to back in ONE ``tradingd run --session forever`` process.

The daemon runs the systemd unit's own command with the shipped config against the Alpaca
emulator as a process whose market follows the XNYS calendar (``--calendar XNYS``) and
replays one day of bars in each session. Both processes read their wall clock from one
libfaketime timestamp file that the test rewrites (``tests.faketime``): the test walks
them through Wed 2024-11-27 (a normal day), Thu 2024-11-28 (Thanksgiving: no session)
and Fri 2024-11-29 (a 13:00 early close), waiting for the daemon's own log lines at each
step, never sleeping to synchronise.

Each trading day: preflight (ready), warm-up, open, a few minutes of trading on the demo
rule, then the emulator stops filling so that orders are working when the CLOSING window
starts: they are cancelled, positions are flattened (``at_close: flatten``), and at the
close the day's report is written; the broker is flat with no open order.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from signals import demodata
from tests.daemon.live_kit import Event, Proc
from tests.daemon.lives import unit_exec_start
from tests.data import REPO
from tests.faketime import faketime_env, jump

pytestmark = pytest.mark.slow

NY = ZoneInfo("America/New_York")
KEY, SECRET = "PKLIVESESSIONS00", "live-sessions-secret-canary-42"
SYMBOLS = [f"DEMO{i:02d}" for i in range(8)]
OPEN_STATUSES = ("new", "accepted", "partially_filled", "pending_new")
LEAD = timedelta(seconds=2)  # jump this far before a boundary: both processes re-read


def ny(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=NY)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADINGD_", "APCA_"))}
    env.update(APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET, **extra)
    return env


class Day:
    """The test's hand on the clock, the emulator and the daemon."""

    def __init__(self, clock: Path, emu: Proc, daemon: Proc, base: str, state: Path) -> None:
        self.clock, self.emu, self.daemon, self.base, self.state = clock, emu, daemon, base, state

    def to_phase(self, at: datetime, phase: str, session: str) -> Event:
        """Jump to just before ``at`` and wait for the daemon to enter ``phase``."""
        mark = len(self.daemon.lines)
        jump(self.clock, at - LEAD)
        _, event = self.daemon.wait_event(
            f"session.{phase.lower()}", 60, start=mark,
            where=lambda e: e["phase"] == phase and e["session"] == session)
        return event

    def minute(self, at: datetime) -> None:
        """Step to ``at`` (a minute boundary) and wait for the emulator's bars of the
        minute that just ended."""
        mark = len(self.emu.lines)
        jump(self.clock, at)
        stamp = (at - timedelta(minutes=1)).astimezone(ZoneInfo("UTC")).isoformat()
        self.emu.wait_line(f"session bars {re.escape(stamp)}", 60, start=mark)

    def control(self, name: str, **kwargs: Any) -> None:
        req = urllib.request.Request(f"{self.base}/_control/{name}", method="POST",
                                     data=json.dumps(kwargs).encode())
        urllib.request.urlopen(req, timeout=10).read()

    def snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_control/snapshot", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def status(self) -> dict[str, Any]:
        """``tradingd status --json`` as an operator runs it."""
        data: dict[str, Any] = json.loads(self.status_text("--json"))
        return data

    def status_text(self, *args: str) -> str:
        """``tradingd status`` as an operator runs it."""
        out = subprocess.run([sys.executable, "-m", "daemon.cli", "status", "--state-dir",
                              str(self.state), *args], cwd=REPO, capture_output=True,
                             text=True, timeout=60, check=True, env=_env())
        return out.stdout

    def status_at(self, at: datetime, timeout: float = 30) -> dict[str, Any]:
        """``status`` once the daemon's clock has reached ``at`` (after a jump)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if datetime.fromisoformat(status["clock"]) >= at:
                return status
            assert time.monotonic() < deadline, f"the daemon's clock is still {status['clock']}"

    def trade(self, day: str, open_at: datetime, minutes: int) -> list[str]:
        """Preflight, warm-up, open, ``minutes`` of trading; then fills stop and the
        minutes go on until orders are working. Returns the working orders' ids."""
        pre = self.to_phase(open_at - timedelta(minutes=60), "PREFLIGHT", day)
        assert pre["ready"] is True, pre
        assert self.status()["counters"]["orders_today"] == 0, "the day's counters restart"
        warm = self.to_phase(open_at - timedelta(minutes=30), "WARMUP", day)
        assert warm["model"] == "off"
        self.to_phase(open_at, "OPEN", day)
        for k in range(1, minutes + 1):
            self.minute(open_at + timedelta(minutes=k))
        self.control("pause_fills", on=True)
        for k in range(minutes + 1, minutes + 15):
            self.minute(open_at + timedelta(minutes=k))
            working = self.status()["open_orders"]
            if working:
                return [o["client_order_id"] for o in working]
        raise AssertionError("no order was working after 14 minutes without fills")

    def close(self, day: str, close_at: datetime, working: list[str]) -> Event:
        """CLOSING (cancel, flatten; fills resume once the flatten orders are sent), then
        CLOSED; checks the broker is flat with nothing open. Returns ``session.closed``."""
        mark = len(self.daemon.lines)
        jump(self.clock, close_at - timedelta(minutes=10) - LEAD)
        self.daemon.wait_event("order.submitted", 60, start=mark,
                               where=lambda e: e["client_order_id"].startswith("close-"))
        self.control("pause_fills", on=False)
        _, closing = self.daemon.wait_event(
            "session.closing", 60, start=mark, where=lambda e: e["session"] == day)
        assert closing["at_close"] == "flatten" and closing["flat"] is True, closing
        assert closing["cancelled"] >= len(working) and closing["still_open"] == 0, closing
        closed = self.to_phase(close_at, "CLOSED", day)
        snap = self.snapshot()
        by_cid = {o["client_order_id"]: o for o in snap["orders"]}
        assert {by_cid[c]["status"] for c in working} == {"canceled"}, "day orders cancelled"
        assert not [o for o in snap["orders"] if o["status"] in OPEN_STATUSES]
        assert snap["positions"] == {}, "flat at the close"
        assert closed["positions"] == {} and closed["still_open"] == 0, closed
        return closed


def _start(tmp: Path, at: datetime) -> tuple[Path, Proc, Proc, str, Path]:
    clock = tmp / "faketime"
    bars = demodata.write(tmp / "day.csv", days=1, n_symbols=len(SYMBOLS), seed=21)
    fake = faketime_env(clock, at)
    emu = Proc([sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--calendar",
                "XNYS", "--session-bars", str(bars), "--key-id", KEY, "--secret-key", SECRET],
               _env(**fake), tmp / "emulator.log")
    _, line = emu.wait_line(r"alpaca emulator on http://127\.0\.0\.1:\d+", 60)
    port = re.search(r"127\.0\.0\.1:(\d+)", line)
    assert port is not None
    base = f"http://127.0.0.1:{port.group(1)}"
    state = tmp / "state"
    daemon = Proc(unit_exec_start(state), _env(
        **fake, APCA_API_BASE_URL=base, APCA_API_DATA_URL=base,
        TRADINGD_FEED__SYMBOLS=json.dumps(SYMBOLS), TRADINGD_SESSION__AT_CLOSE="flatten",
        # the runner re-reads the (driven) clock twice a second, not every 30 s
        TRADINGD_SESSION__MAX_SLEEP_SECS="0.5", TRADINGD_HTTP__LISTEN="127.0.0.1:0",
        # the demo rule trades from the third minute on, every minute
        TRADINGD_SIGNALS__DEMO__LOOKBACK="2", TRADINGD_SIGNALS__DEMO__EVERY_BARS="1"),
        tmp / "daemon.log")
    return clock, emu, daemon, base, state


def test_three_sessions_when_normal_holiday_early_close_then_each_day_closes_flat(
        tmp_path: Path) -> None:
    # Arrange: Wednesday before Thanksgiving, 08:29 New York
    t0 = time.monotonic()
    clock, emu, daemon, base, state = _start(tmp_path, ny("2024-11-27 08:29:00"))
    d = Day(clock, emu, daemon, base, state)
    try:
        _, started = daemon.wait_event("session.started", 90)
        assert started["phase"] == "CLOSED" and started["session"] == "2024-11-26"

        # Act + Assert: Wednesday, a normal day (09:30-16:00)
        working = d.trade("2024-11-27", ny("2024-11-27 09:30"), minutes=6)
        wed = d.close("2024-11-27", ny("2024-11-27 16:00"), working)
        assert wed["early_close"] is False and wed["orders_today"] > 0

        # Thanksgiving: HOLIDAY from midnight, no preflight, nothing traded
        d.to_phase(ny("2024-11-28 00:00"), "HOLIDAY", "2024-11-27")
        jump(clock, ny("2024-11-28 12:00"))
        status = d.status_at(ny("2024-11-28 12:00"))
        assert status["session"]["phase"] == "HOLIDAY"
        assert status["session"]["next_phase"] == "PREFLIGHT"
        assert status["session"]["upcoming"] == "2024-11-29"
        assert "session: HOLIDAY (2024-11-27)  next: PREFLIGHT" in d.status_text()
        _, http = daemon.wait_event("http.listening", 5)  # the status page's document
        with urllib.request.urlopen(f"http://127.0.0.1:{http['port']}/api/overview",
                                    timeout=10) as r:
            assert json.loads(r.read())["session_phase"] == "holiday"

        # Friday, the 13:00 early close
        working = d.trade("2024-11-29", ny("2024-11-29 09:30"), minutes=5)
        fri = d.close("2024-11-29", ny("2024-11-29 13:00"), working)
        assert fri["early_close"] is True
        snap = d.snapshot()
        code = daemon.stop()
    finally:
        daemon.kill()
        emu.kill()

    # Assert: one process all along, stopped in order
    assert code == 0, "".join(daemon.lines[-40:])
    events = daemon.events()
    assert len({e["pid"] for e in events if e["event"] == "daemon.start"}) == 1
    names = [e["event"] for e in events]
    assert names.count("daemon.ready") == 1
    preflights = [e["session"] for e in events if e["event"] == "session.preflight"]
    assert preflights == ["2024-11-27", "2024-11-29"], "no preflight on the holiday"
    no_fail = [e for e in events if e["event"] == "session.preflight_check"
               and e["status"] == "fail"]
    assert not no_fail
    # No order was created at the broker on Thanksgiving
    created = Counter(datetime.fromisoformat(o["created_at"].replace("Z", "+00:00")[:26]
                                             + "+00:00").astimezone(NY).date().isoformat()
                      for o in snap["orders"])
    assert set(created) == {"2024-11-27", "2024-11-29"}, created
    # The daily order counter restarted: each close counts its own day's orders only
    assert wed["orders_today"] == created["2024-11-27"]
    assert fri["orders_today"] == created["2024-11-29"]
    # Each day has its own report, HTML and JSON, with that day's orders
    for day, closed in (("2024-11-27", wed), ("2024-11-29", fri)):
        html = state / "reports" / f"report-{day}.html"
        doc = json.loads((state / "reports" / f"report-{day}.json").read_text())
        assert html.is_file() and day in html.read_text()
        assert doc["day"] == day and doc["orders"] == closed["orders"] > 0
        assert len(doc["day_orders"]) == doc["orders"]
        assert {datetime.fromisoformat(o["created"]).astimezone(NY).date().isoformat()
                for o in doc["day_orders"]} == {day}
        assert closed["report"] == str(html)
    # Every phase change is journaled
    with sqlite3.connect(state / "journal.sqlite") as db:
        phases = [json.loads(p) for (p,) in db.execute(
            "SELECT payload FROM journal WHERE type = 'SessionPhaseChanged' ORDER BY seq")]
    assert [(p["session"], p["phase"]) for p in phases] == [
        ("2024-11-26", "CLOSED"),
        *[("2024-11-27", p) for p in ("PREFLIGHT", "WARMUP", "OPEN", "CLOSING", "CLOSED")],
        ("2024-11-27", "HOLIDAY"),
        *[("2024-11-29", p) for p in ("PREFLIGHT", "WARMUP", "OPEN", "CLOSING", "CLOSED")]]
    out = "".join(daemon.lines)
    assert KEY not in out and SECRET not in out
    assert time.monotonic() - t0 < 240
