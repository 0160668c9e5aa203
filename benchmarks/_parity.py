"""The cross-engine parity workload: its bars, its strategy rule and its expected orders.

Shared by ``benchmarks/replay.py --workload parity`` (tradingd) and
``benchmarks/parity_nautilus.py`` (the comparison engine), so both run the same bars and
the same decisions. Depends on numpy, pandas and exchange_calendars only (the comparison
engine's virtualenv has no tradingd).

Bars: ``symbols`` symbols x ``days`` full XNYS sessions (390 one-minute bars, 09:30 to
16:00 New York; holidays and early closes are skipped) of a seeded geometric random walk.
Each bar's open is the previous bar's close, so "the next bar's open" and "this bar's
close" are the same price.

Rule (``ParityRule``): on every 10th bar of each symbol, a market order toward a target
of +10 shares if its last return was up, else toward 0; an order only when the target
differs from the position. No decision on a session's last bar: nothing can fill it
there (tradingd's paper broker fills a market order at the next bar's open and the gate
denies MARKET_CLOSED at 16:00; the comparison engine, which fills at the bar's close and
knows no session, applies the same rule so both place the same orders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

SEED = 42
FIRST_SESSION = date(2024, 3, 4)
BARS_PER_SESSION = 390
EVERY = 10
TARGET = 10
START_PRICE = 100.0
NEW_YORK = "America/New_York"
_NY = ZoneInfo(NEW_YORK)
_MINUTE = timedelta(minutes=1)


def sessions(days: int, first: date = FIRST_SESSION) -> list[date]:
    """The first ``days`` full (390-minute) XNYS sessions from ``first`` on."""
    import exchange_calendars as xc

    cal = xc.get_calendar("XNYS")
    out: list[date] = []
    start = pd.Timestamp(first)
    while len(out) < days:
        end = start + pd.Timedelta(days=2 * (days - len(out)) + 10)
        for s in cal.sessions_in_range(start, end):
            minutes = (cal.session_close(s) - cal.session_open(s)).total_seconds() / 60
            if minutes == BARS_PER_SESSION and len(out) < days:
                out.append(s.date())
        start = end + pd.Timedelta(days=1)
    return out


def symbols(n: int) -> list[str]:
    return [f"P{i:03d}" for i in range(n)]


def parity_frame(days: int, n_symbols: int, seed: int = SEED) -> pd.DataFrame:
    """The bars, sorted by (timestamp, symbol); ``timestamp`` is the bar start (ISO)."""
    rng = np.random.default_rng(seed)
    syms = symbols(n_symbols)
    price = np.full(n_symbols, START_PRICE)
    stamps: list[str] = []
    closes = []
    for day in sessions(days):
        base = pd.Timestamp(f"{day} 09:30", tz=NEW_YORK)
        for m in range(BARS_PER_SESSION):
            stamps.append((base + pd.Timedelta(minutes=m)).isoformat())
            price = price * np.exp(rng.normal(0, 0.001, n_symbols))
            closes.append(price.copy())
    close = np.array(closes).round(4)
    open_ = np.vstack([close[:1], close[:-1]])
    frame = pd.DataFrame({
        "timestamp": np.repeat(stamps, n_symbols), "symbol": np.tile(syms, len(stamps)),
        "open": open_.ravel(), "close": close.ravel(), "volume": 1000,
    })
    frame["high"] = frame[["open", "close"]].max(axis=1)
    frame["low"] = frame[["open", "close"]].min(axis=1)
    return frame[["timestamp", "symbol", "open", "high", "low", "close", "volume"]]


def write_parity_bars(days: int, n_symbols: int, out: Path, seed: int = SEED) -> Path:
    parity_frame(days, n_symbols, seed).to_csv(out, index=False)
    return out


def closes_session(bar_start: datetime) -> bool:
    """True for a session's last bar (it ends at 16:00 New York): nothing fills after it.
    ``bar_start`` is timezone-aware."""
    end = (bar_start + _MINUTE).astimezone(_NY)
    return end.hour == 16 and end.minute == 0


@dataclass(slots=True)
class ParityRule:
    """The strategy's decisions, engine-free: ``decide`` returns the target position
    (0 or ``TARGET``) on a decision bar, else None."""

    counts: dict[str, int] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)

    def decide(self, symbol: str, close: float, last_of_session: bool) -> int | None:
        n = self.counts.get(symbol, 0) + 1
        self.counts[symbol] = n
        prev = self.last.get(symbol)
        self.last[symbol] = close
        if n % EVERY or prev is None or last_of_session:
            return None
        return TARGET if close > prev else 0


def reference_orders(frame: pd.DataFrame) -> int:
    """How many orders the rule places on these bars when every order fills before the
    symbol's next decision (as in both engines): the engine-free count both must match."""
    rule = ParityRule()
    held: dict[str, int] = {}
    orders = 0
    last_flags = {s: closes_session(datetime.fromisoformat(s))
                  for s in frame["timestamp"].unique()}
    for stamp, sym, close in zip(frame["timestamp"], frame["symbol"], frame["close"],
                                 strict=True):
        target = rule.decide(sym, float(close), last_flags[stamp])
        if target is not None and target != held.get(sym, 0):
            held[sym] = target
            orders += 1
    return orders


__all__ = ["EVERY", "SEED", "TARGET", "ParityRule", "closes_session", "parity_frame",
           "reference_orders", "sessions", "symbols", "write_parity_bars"]
