"""Equity marks the loss limits are measured from: start of day, peak, session start.

Start-of-day and peak survive restarts (the journal persists ``snapshot()`` and calls
``restore``); the session start is this daemon run's first equity observation.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(slots=True)
class EquityMarks:
    """Reference equities. ``observe`` rolls the day and raises the peak."""

    day: str = ""
    start_of_day: Decimal | None = None
    peak: Decimal | None = None
    session_start: Decimal | None = None

    def observe(self, equity: Decimal, day: str) -> None:
        if day != self.day:
            self.day = day
            self.start_of_day = equity
        if self.session_start is None:
            self.session_start = equity
        if self.peak is None or equity > self.peak:
            self.peak = equity

    def start_day(self, day: str, equity: Decimal) -> None:
        """A new trading day starts from ``equity`` (the broker's equity at the last
        close, when it says), not from the first equity observed after midnight."""
        self.day = day
        self.start_of_day = equity
        if self.peak is None or equity > self.peak:
            self.peak = equity

    def losses(self, equity: Decimal) -> tuple[Decimal, Decimal, Decimal]:
        """(daily loss, drawdown from peak, session drawdown) as fractions, >= 0 is loss."""
        return (_down(self.start_of_day, equity), _down(self.peak, equity),
                _down(self.session_start, equity))

    def snapshot(self) -> dict[str, Any]:
        return {"day": self.day, "start_of_day": _s(self.start_of_day), "peak": _s(self.peak),
                "session_start": _s(self.session_start)}

    def restore(self, day: str, start_of_day: Decimal | None, peak: Decimal | None) -> None:
        """Adopt persisted marks (from the journal) before the first observation."""
        self.day = day
        self.start_of_day = start_of_day
        self.peak = peak


ZERO = Decimal(0)


def _down(ref: Decimal | None, equity: Decimal) -> Decimal:
    if ref is None or ref <= 0:
        return ZERO
    return (ref - equity) / ref


def _s(v: Decimal | None) -> str | None:
    return None if v is None else str(v)
