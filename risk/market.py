"""Is the market open? The broker's ``MarketClock`` when it has one, else the XNYS calendar.

``exchange_calendars`` takes most of a second to import and build, so it is loaded lazily
(call ``warm()`` at start-up to pay that before the first order) and each New York day's
session bounds are computed once and cached: the per-order check is two datetime
comparisons.

Extended hours are 04:00 ET to the open and the close to close + 4 h (20:00 ET, 17:00 on
early-close days), on session days only.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from kernel.model import MarketClock
from kernel.time import NEW_YORK

_PRE_MARKET = time(4, 0)
_AFTER_HOURS = timedelta(hours=4)


class Market(Protocol):
    def is_open(self, now: datetime, *, extended: bool = False) -> bool: ...


class AlwaysOpen:
    """A market that never closes (tests, 24/7 venues)."""

    def is_open(self, now: datetime, *, extended: bool = False) -> bool:
        return True


class _Day:
    __slots__ = ("ext_close", "ext_open", "hi", "lo", "reg_close", "reg_open")

    def __init__(self, lo: datetime, hi: datetime, bounds: tuple[datetime, datetime] | None):
        self.lo, self.hi = lo, hi
        if bounds is None:
            # Not a session: empty windows.
            self.reg_open = self.reg_close = self.ext_open = self.ext_close = lo
            return
        self.reg_open, self.reg_close = bounds
        self.ext_open = datetime.combine(lo.astimezone(NEW_YORK).date(), _PRE_MARKET,
                                         NEW_YORK).astimezone(UTC)
        self.ext_close = self.reg_close + _AFTER_HOURS


class MarketHours:
    """Session hours from the broker clock (when fresh) or the exchange calendar."""

    def __init__(self, calendar: str = "XNYS") -> None:
        self._calendar_name = calendar
        self._cal: Any = None
        self._day: _Day | None = None
        self._broker: MarketClock | None = None
        self._broker_until: datetime | None = None

    def warm(self) -> None:
        """Load the calendar now (slow: ~1 s) instead of on the first order."""
        self._calendar()

    def set_broker_clock(self, clock: MarketClock | None) -> None:
        """Adopt the broker's clock; trusted until its next open/close transition."""
        self._broker = clock
        if clock is None:
            self._broker_until = None
            return
        self._broker_until = clock.next_close if clock.is_open else clock.next_open

    def is_open(self, now: datetime, *, extended: bool = False) -> bool:
        b = self._broker
        if b is not None and not extended and b.ts <= now and (
            self._broker_until is None or now < self._broker_until
        ):
            return b.is_open
        day = self._day
        if day is None or not day.lo <= now < day.hi:
            day = self._day = self._load_day(now)
        if extended:
            return day.ext_open <= now < day.ext_close
        return day.reg_open <= now < day.reg_close

    def session_bounds(self, now: datetime) -> tuple[datetime, datetime] | None:
        """Regular open and close (UTC) of ``now``'s New York day, None if no session."""
        day = self._load_day(now)
        return None if day.reg_open == day.reg_close else (day.reg_open, day.reg_close)

    def _load_day(self, now: datetime) -> _Day:
        d = now.astimezone(NEW_YORK).date()
        lo = datetime.combine(d, time(0), NEW_YORK).astimezone(UTC)
        hi = datetime.combine(d + timedelta(days=1), time(0), NEW_YORK).astimezone(UTC)
        return _Day(lo, hi, self._bounds(d))

    def _bounds(self, d: date) -> tuple[datetime, datetime] | None:
        import pandas as pd

        cal = self._calendar()
        ts = pd.Timestamp(d)
        if ts < cal.first_session or ts > cal.last_session or not cal.is_session(ts):
            return None
        return (cal.session_open(ts).to_pydatetime(), cal.session_close(ts).to_pydatetime())

    def _calendar(self) -> Any:
        if self._cal is None:
            import warnings

            import exchange_calendars

            with warnings.catch_warnings():
                # pandas deprecation noise from inside exchange_calendars, not ours.
                warnings.simplefilter("ignore")
                self._cal = exchange_calendars.get_calendar(self._calendar_name)
        return self._cal
