"""Market-time helpers: New York trading day of a timestamp.

Every order, fill and risk tick asks for its New York date; converting each timestamp to
New York time cost a few µs each on the order path. The helpers remember the last date's
bounds in UTC, so a timestamp within them (nearly all of them: time moves forward) is
answered with two comparisons.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")

# [(first instant, first instant of the next date, the date's ISO string)] of the last
# date asked for; the tuple is replaced as a whole, so threads never see half of one.
_last: list[tuple[datetime, datetime, str]] = []


def _bounds(ts: datetime) -> tuple[datetime, datetime, str]:
    last = _last[0] if _last else None
    if last is not None and ts.tzinfo is not None and last[0] <= ts < last[1]:
        return last
    day = ts.astimezone(NEW_YORK).date()
    start = datetime.combine(day, time(0), tzinfo=NEW_YORK).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=NEW_YORK).astimezone(UTC)
    found = (start, end, day.isoformat())
    if ts.tzinfo is not None:
        _last[:] = [found]
    return found


def trading_day(ts: datetime) -> str:
    """The New York calendar date of ``ts`` (ISO), which is the session it belongs to."""
    return _bounds(ts)[2]


def next_new_york_midnight(ts: datetime) -> datetime:
    """The first instant of the New York date after ``ts`` (a day order's expiry), UTC."""
    return _bounds(ts)[1]
