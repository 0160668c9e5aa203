"""Read-only views of the journal for the HTTP API: the day's rejects (paged) and the
intraday equity curve.

The daemon keeps no list of denials in memory: they are journaled (``OrderDenied`` rows
with reason, limit and observed value), and ``/api/rejects`` pages through them by
sequence number. Each query opens its own read-only SQLite connection in a worker thread,
so a slow disk never stalls the event loop and the journal's writer is never touched.
Rows still in the journal's write buffer (at most ``flush_interval``, 0.2 s) appear on
the next read.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from kernel.time import NEW_YORK

PAGE_MAX = 500
EQUITY_POINTS_MAX = 1000
_REJECT_TYPES = ("OrderDenied", "OrderRejected")


def day_start(now: datetime) -> datetime:
    """Midnight in New York of ``now``'s trading day, in UTC."""
    d = now.astimezone(NEW_YORK).date()
    return datetime.combine(d, time(0), NEW_YORK).astimezone(UTC)


class JournalViews:
    """Queries over ``path`` (the journal file); a missing file reads as empty."""

    def __init__(self, path: Path | None) -> None:
        self._path = path

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection | None]:
        if self._path is None or not self._path.exists():
            yield None
            return
        uri = f"file:{self._path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=2.0)) as db:
            yield db

    async def rejects(self, now: datetime, *, before: int | None, limit: int) -> dict[str, Any]:
        """The day's denials, newest first: ``limit`` rows with ``seq`` below ``before``."""
        return await asyncio.to_thread(self._rejects, now, before, max(1, min(limit, PAGE_MAX)))

    def _rejects(self, now: datetime, before: int | None, limit: int) -> dict[str, Any]:
        since = day_start(now)
        until = since + timedelta(days=1)
        with self._db() as db:
            if db is None:
                return {"rejects": [], "next_before": None}
            rows = db.execute(
                "SELECT seq, ts, type, client_order_id, symbol, payload FROM journal "
                f"WHERE type IN ({','.join('?' * len(_REJECT_TYPES))}) AND seq < ? "
                "AND ts >= ? AND ts < ? ORDER BY seq DESC LIMIT ?",
                (*_REJECT_TYPES, before if before is not None else 2**62, since.isoformat(),
                 until.isoformat(), limit + 1)).fetchall()
        page = [_reject(r) for r in rows[:limit]]
        more = len(rows) > limit
        return {"rejects": page, "next_before": page[-1]["seq"] if more and page else None}

    async def equity(self, now: datetime) -> list[tuple[str, str]]:
        """The day's ``EquityMark`` (time, equity), thinned to at most 1,000 points."""
        return await asyncio.to_thread(self._equity, now)

    def _equity(self, now: datetime) -> list[tuple[str, str]]:
        since = day_start(now)
        with self._db() as db:
            if db is None:
                return []
            rows = db.execute(
                "SELECT ts, json_extract(payload, '$.equity') FROM journal "
                "WHERE type = 'EquityMark' AND ts >= ? AND ts < ? ORDER BY seq",
                (since.isoformat(), (since + timedelta(days=1)).isoformat())).fetchall()
        step = max(1, -(-len(rows) // EQUITY_POINTS_MAX))
        thinned = rows[::step]
        if rows and thinned[-1] is not rows[-1]:
            thinned.append(rows[-1])  # always end on the newest mark
        return [(str(ts), str(eq)) for ts, eq in thinned]


def _reject(row: tuple[int, str, str, str | None, str | None, str]) -> dict[str, Any]:
    seq, ts, type_, cid, symbol, payload = row
    p = json.loads(payload)
    if type_ == "OrderDenied":
        i = p.get("intent", {})
        sig = i.get("signal") or {}
        return {"seq": seq, "ts": ts, "source": "gate", "client_order_id": cid,
                "symbol": symbol, "side": i.get("side"), "qty": i.get("qty"),
                "reason": p.get("reason"), "limit": p.get("limit"),
                "observed": p.get("observed"), "signal_id": sig.get("id")}
    return {"seq": seq, "ts": ts, "source": "broker", "client_order_id": cid,
            "symbol": symbol, "side": None, "qty": None, "reason": p.get("reason"),
            "limit": None, "observed": None, "signal_id": None}


__all__ = ["JournalViews", "day_start"]
