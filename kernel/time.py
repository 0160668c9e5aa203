"""Market-time helpers: New York trading day of a timestamp."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")


def trading_day(ts: datetime) -> str:
    """The New York calendar date of ``ts`` (ISO), which is the session it belongs to."""
    return ts.astimezone(NEW_YORK).date().isoformat()
