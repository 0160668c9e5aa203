"""The emulator's market on an exchange calendar and its own wall clock (test support).

With ``python -m tests.alpaca_emulator --calendar XNYS [--session-bars CSV]`` (or
``Emulator(calendar="XNYS", session_bars=...)``) the emulated market follows the
calendar at the process's wall clock, which a test may drive with libfaketime:

* ``/v2/clock`` and ``/v2/calendar`` answer from the calendar (holidays out, 13:00 early
  closes, DST), as Alpaca does;
* the market opens and closes by it: opening routes accepted orders, closing expires
  open day orders (``Exchange.set_open``); ``last_equity`` becomes the equity at each
  close (what Alpaca reports the next day);
* with session bars (one day of minute bars: the first New York date in the CSV), each
  session replays that day from its open: when the clock passes the end of a minute,
  that minute's bars of the day (by offset from the open) are published stamped with the
  current session's minute, and traded at (a jump over several minutes publishes the
  last one only, as a live feed would not backfill). Each publication is logged
  ``session bars <ts>``;
* ``set_clock(is_open)`` still forces the market open or closed (``clear_clock_override``
  hands it back to the calendar).
"""

from __future__ import annotations

import asyncio
import csv
import logging
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import SessionConfig
from engine.session import TradingCalendar
from kernel.time import NEW_YORK
from tests.alpaca_emulator.state import dec, rfc3339

if TYPE_CHECKING:
    from tests.alpaca_emulator.server import Emulator

log = logging.getLogger("alpaca_emulator.session")

_TICK_SECS = 0.05
_MINUTE = timedelta(minutes=1)


def load_day(path: str | Path) -> list[list[dict[str, Any]]]:
    """The first New York date's regular-session minutes of a bars CSV, in order: each
    minute's bars as dicts (S, o, h, l, c, v)."""
    by_ts: dict[datetime, list[dict[str, Any]]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            ts = datetime.fromisoformat(row["timestamp"].replace("Z", "+00:00"))
            c = float(row["close"])
            by_ts.setdefault(ts, []).append({
                "S": row["symbol"], "o": float(row["open"]), "h": float(row["high"]),
                "l": float(row["low"]), "c": c, "v": int(float(row["volume"])), "vw": c})
    first = min(by_ts).astimezone(NEW_YORK).date()
    return [by_ts[t] for t in sorted(by_ts) if t.astimezone(NEW_YORK).date() == first
            and t.astimezone(NEW_YORK).time() >= datetime(2000, 1, 1, 9, 30).time()]


class SessionMarket:
    """Drives ``emu``'s market by the calendar (see the module doc)."""

    def __init__(self, emu: Emulator, *, calendar: str = "XNYS",
                 session_bars: str | Path | None = None) -> None:
        self.emu = emu
        self.cal = TradingCalendar(SessionConfig(calendar=calendar))
        self.tape = load_day(session_bars) if session_bars else []
        self.override: bool | None = None
        self.published: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        if self.tape:  # known symbols with a price before the first session
            for b in self.tape[0]:
                emu.exchange.prices[b["S"]] = dec(b["o"])

    def now(self) -> datetime:
        return self.emu.exchange.now()

    def is_open(self, t: datetime) -> bool:
        if self.override is not None:
            return self.override
        up = self.cal.upcoming(t)
        return up.open <= t < up.close

    def start(self) -> None:
        self.cal.warm()
        self.tick()
        self._task = asyncio.create_task(self._run(), name="emu.session_market")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_TICK_SECS)
            self.tick()

    def tick(self) -> None:
        t = self.now()
        ex = self.emu.exchange
        is_open = self.is_open(t)
        if is_open != ex.is_open:
            if not is_open:
                ex.last_equity = ex.equity()
            self.emu.set_market_open(is_open)
            log.info("market %s at %s", "open" if is_open else "closed", t.isoformat())
        if is_open and self.tape and self.override is None:
            self._publish_minute(t)

    def _publish_minute(self, t: datetime) -> None:
        session = self.cal.upcoming(t)
        minute = t.replace(second=0, microsecond=0) - _MINUTE  # the minute that just ended
        if minute < session.open or (self.published is not None and minute <= self.published):
            return
        k = int((minute - session.open) / _MINUTE)
        if k >= len(self.tape):
            return
        self.published = minute
        self.emu.publish_bars(minute, self.tape[k])
        log.info("session bars %s", minute.isoformat())

    def clock_json(self) -> dict[str, Any]:
        t = self.now()
        exp = self.cal.expected_clock(t)
        is_open = self.is_open(t)
        return {"timestamp": rfc3339(t), "is_open": is_open,
                "next_open": rfc3339(exp.next_open), "next_close": rfc3339(exp.next_close)}

    def calendar_json(self, start: date, end: date) -> list[dict[str, Any]]:
        out = []
        d = start
        while d <= end:
            s = self.cal.session_on(d)
            if s is not None:
                out.append({"date": d.isoformat(), "open": _hm(s.open), "close": _hm(s.close),
                            "session_open": "0400", "session_close": "2000",
                            "settlement_date": (d + timedelta(1)).isoformat()})
            d += timedelta(1)
        return out


def _hm(t: datetime) -> str:
    return t.astimezone(NEW_YORK).strftime("%H:%M")


__all__ = ["SessionMarket", "load_day"]
