"""The journal: an append-only SQLite record of every command and event that changes state.

One table, one row per fact::

    journal(seq INTEGER PRIMARY KEY, ts TEXT, type TEXT, client_order_id TEXT,
            symbol TEXT, payload TEXT)

``type`` is the event class name (``OrderFilled``, ``OrderDenied``...) or one of the
journal's own row types (``OrderIntent``, ``Signal``, ``EquityMark``, ``BooksSnapshot``,
``ReconcileResult``, ``SessionStarted``, ``SessionStopped``). ``ts`` is domain time (the
event's own timestamp, else the clock's), ``payload`` the JSON of the event's fields
(``engine.codec``: Decimals as strings, so money round-trips exactly).

Durability policy (the file is in WAL mode with ``synchronous=FULL``):

* **Order intents** are written by ``record_intent``, the ``OrderManager``'s ``on_intent``
  hook, which runs *before* the order goes to the broker. Every intent is fsynced
  before its broker call: by default at once (one commit per intent); with
  ``group_commit`` the hook only buffers it, and ``DurableBroker.submit`` (the broker as
  the order manager sees it) commits every owed intent in one fsynced transaction just
  before the first of them is sent. One signal batch that yields ten orders then costs
  one fsync, not ten, and no intent ever reaches the broker before it is on disk. A crash
  after the broker call can therefore always be resolved by looking the order up by
  ``client_order_id``.
  ``TradingStateChanged``, ``ExecutionModeChanged``, ``ApprovalPending``,
  ``ApprovalResolved`` and ``BooksSnapshot`` rows are written the same way: state a
  restart must not forget.
* **Everything else** is buffered and committed every ``batch_rows`` rows or every
  ``flush_interval`` seconds, whichever comes first, and on close. A SIGKILL can lose
  the last fraction of a second of such rows (acks, fills); recovery gets them back from
  the broker (fills by execution id) and journals them then.

Secrets never reach the journal: events carry none, and every payload passes through
the log scrubber as a last line of defence.

Events subscribed with ``attach``: ``SignalBatch`` (one ``Signal`` row per signal),
``SignalRejected``, ``OrderDenied``, ``OrderApproved``, every ``OrderEvent``,
``TradingStateChanged``, ``ExecutionModeChanged``, ``ApprovalPending``,
``ApprovalResolved``, ``AlertRaised``, ``BrokerStatusChanged``,
``ReconciliationChanged``, ``ShutdownRequested``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from engine.codec import dumps
from kernel.bus import Bus
from kernel.clock import Clock, WallClock
from kernel.events import (
    AlertRaised,
    ApprovalPending,
    ApprovalResolved,
    BrokerStatusChanged,
    Event,
    ExecutionModeChanged,
    OrderApproved,
    OrderDenied,
    OrderEvent,
    OrderFilled,
    OrderIntent,
    ReconciliationChanged,
    ShutdownRequested,
    SignalBatch,
    SignalRejected,
    TradingStateChanged,
)
from kernel.logging import scrub

log = structlog.get_logger("engine.journal")

JOURNAL_FILE = "journal.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    type TEXT NOT NULL,
    client_order_id TEXT,
    symbol TEXT,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_cid ON journal(client_order_id);
CREATE INDEX IF NOT EXISTS journal_symbol ON journal(symbol);
CREATE INDEX IF NOT EXISTS journal_type ON journal(type, seq);
"""
_INSERT = ("INSERT INTO journal(ts, type, client_order_id, symbol, payload) "
           "VALUES (?, ?, ?, ?, ?)")

_Row = tuple[str, str, str | None, str | None, str]
# Buffered: (time, type, client order id, symbol, frozen event or its encoded JSON).
_Pending = tuple[datetime, str, str | None, str | None, Any]


def _is_frozen(payload: Any) -> bool:
    """A frozen dataclass (every event and intent): safe to encode later."""
    params = getattr(type(payload), "__dataclass_params__", None)
    return params is not None and params.frozen

# Rows that are committed (fsynced) at once rather than batched.
_DURABLE_EVENTS = (TradingStateChanged, ExecutionModeChanged, ApprovalPending,
                   ApprovalResolved)


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One journaled fact, as read back."""

    seq: int
    ts: datetime
    type: str
    client_order_id: str | None
    symbol: str | None
    payload: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts.isoformat(), "type": self.type,
                "client_order_id": self.client_order_id, "symbol": self.symbol,
                "payload": self.payload}


class Journal:
    """Append-only SQLite journal (see the module doc for the durability policy).

    Enter it (``async with``) in the daemon: that opens the file and runs the flush
    timer task ``journal.flush``; leaving flushes and closes. Tools (audit, report,
    tests) can ``open()``/``close()`` it synchronously instead.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock | None = None,
        batch_rows: int = 256,
        flush_interval: float = 0.2,
        group_commit: bool = False,
    ) -> None:
        self.path = path
        self._clock: Clock = clock or WallClock()
        self._batch_rows = batch_rows
        self._flush_interval = flush_interval
        self._db: sqlite3.Connection | None = None
        self._buffer: list[_Pending] = []
        self._flush_soon = False
        # client_order_id -> symbol of recent orders, to label acks (older ones: the file)
        self._symbols: OrderedDict[str, str] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._group_commit = group_commit
        self._owed = 0  # intents buffered but not yet fsynced (group commit)
        self._buffered_intents: set[str] = set()  # ids of the intents in ``_buffer``
        self.rows_written = 0
        self.durable_writes = 0
        self.fsync_secs = 0.0

    # -- lifecycle -----------------------------------------------------------------------

    def open(self, *, read_only: bool = False) -> Self:
        """Open (creating if needed) the journal file; ``read_only`` opens an existing
        one for reading only (``tradingd preflight`` beside a running daemon)."""
        if read_only:
            self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False)
            for cid, sym in self._db.execute("SELECT client_order_id, symbol FROM journal "
                                             "WHERE type='OrderIntent'"):
                self._symbols[cid] = sym
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db = db
        self.flush()  # facts published before the journal opened (e.g. a kill switch)
        log.info("journal.opened", path=str(self.path))
        return self

    def close(self) -> None:
        """Flush buffered rows and close the file."""
        if self._db is None:
            return
        self.flush()
        self._db.close()
        self._db = None
        log.info("journal.closed", path=str(self.path), rows=self.rows_written,
                 durable=self.durable_writes)

    async def __aenter__(self) -> Self:
        self.open()
        self._task = asyncio.create_task(self._flush_loop(), name="journal.flush")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.close()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval)
            if self._buffer:
                self.flush()

    @property
    def is_open(self) -> bool:
        return self._db is not None

    # -- writing -------------------------------------------------------------------------

    def append(
        self,
        type_: str,
        payload: Any,
        *,
        ts: datetime | None = None,
        client_order_id: str | None = None,
        symbol: str | None = None,
        durable: bool = False,
    ) -> None:
        """Add a row; ``durable`` commits it (and all buffered rows) with an fsync now."""
        if symbol is None and client_order_id is not None:
            symbol = self._symbol_of(client_order_id)
        when = ts or self._clock.now()
        # Frozen events are encoded when the buffer is written, off the bar-to-order path;
        # anything mutable is encoded now, as it is at this moment.
        body: Any = payload if _is_frozen(payload) else scrub(dumps(payload))
        self._buffer.append((when, type_, client_order_id, symbol, body))
        if durable:
            self.sync()
        elif len(self._buffer) >= self._batch_rows and not self._flush_soon:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Flush on the loop's next turn (never in the middle of a bus dispatch)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_soon = True
        loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_soon = False
        if self._db is not None:
            self.flush()

    def record_intent(self, intent: OrderIntent) -> None:
        """The ``OrderManager`` ``on_intent`` hook: journal the intent durably (fsync)
        before the broker sees it. A failure here raises, so the order is never sent."""
        self._require()  # an intent that cannot be journaled must not reach the broker
        self._remember(intent.client_order_id, intent.symbol)
        self._buffered_intents.add(intent.client_order_id)
        # Stamped with the clock at submission (``Order.created_ts``), not the signal's time.
        self.append("OrderIntent", intent, ts=self._clock.now(),
                    client_order_id=intent.client_order_id, symbol=intent.symbol,
                    durable=not self._group_commit)
        if self._group_commit:
            self._owed += 1

    def ensure_durable(self) -> None:
        """Fsync every intent still owed (group commit); a no-op when none is."""
        if self._owed:
            self.sync()

    def flush(self) -> None:
        """Commit buffered rows in one transaction."""
        if not self._buffer or self._db is None:
            return  # not open yet: rows wait in the buffer and are written on open
        db = self._db
        pending, self._buffer = self._buffer, []
        owed, self._owed = self._owed, 0
        intents, self._buffered_intents = self._buffered_intents, set()
        rows = [(when.isoformat(), type_, cid, sym,
                 body if isinstance(body, str) else scrub(dumps(body)))
                for when, type_, cid, sym, body in pending]
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._buffer = pending + self._buffer
            self._owed += owed
            self._buffered_intents |= intents
            raise
        self.rows_written += len(rows)

    def sync(self) -> None:
        """Commit everything buffered now; with ``synchronous=FULL`` the WAL is fsynced
        before this returns."""
        t0 = time.perf_counter()
        self.flush()
        self.durable_writes += 1
        self.fsync_secs += time.perf_counter() - t0

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"journal {self.path} is not open")
        return self._db

    # -- bus -----------------------------------------------------------------------------

    def attach(self, bus: Bus) -> None:
        """Subscribe to every event that changes state (see the module doc)."""
        bus.subscribe(SignalBatch, self._on_signals)
        for et in (SignalRejected, OrderDenied, OrderApproved, OrderEvent,
                   TradingStateChanged, ExecutionModeChanged, ApprovalPending,
                   ApprovalResolved, AlertRaised, BrokerStatusChanged,
                   ReconciliationChanged, ShutdownRequested):
            bus.subscribe(et, self.on_event)

    def _on_signals(self, batch: SignalBatch) -> None:
        for s in batch.signals:
            self.append("Signal", s, ts=s.ts, symbol=s.symbol)

    def on_event(self, event: Event) -> None:
        """Journal one event (type, time, order id, symbol, payload)."""
        cid: str | None = None
        symbol: str | None = None
        if isinstance(event, OrderEvent):
            cid = event.client_order_id
            if isinstance(event, OrderFilled):
                symbol = event.fill.symbol
        ts = getattr(event, "ts", None)
        if isinstance(event, ApprovalPending):
            cid, symbol = event.intent.client_order_id, event.intent.symbol
        elif isinstance(event, ApprovalResolved):
            cid = event.client_order_id
        if isinstance(event, OrderDenied | OrderApproved):
            cid, symbol = event.intent.client_order_id, event.intent.symbol
            ts = self._clock.now()
        self.append(type(event).__name__, event, ts=ts, client_order_id=cid, symbol=symbol,
                    durable=isinstance(event, _DURABLE_EVENTS))

    # -- reading -------------------------------------------------------------------------

    def rows(
        self,
        *,
        types: tuple[str, ...] | None = None,
        client_order_id: str | None = None,
        symbol: str | None = None,
        since: datetime | None = None,
        after_seq: int = 0,
    ) -> Iterator[JournalRow]:
        """Rows in journal order (buffered rows are flushed first), filtered."""
        self.flush()
        sql = "SELECT seq, ts, type, client_order_id, symbol, payload FROM journal WHERE seq > ?"
        args: list[Any] = [after_seq]
        if types:
            # With an order id, its own index is the selective one: "+type" keeps
            # SQLite from scanning the (type, seq) index of every row of those types.
            col = "+type" if client_order_id is not None else "type"
            sql += f" AND {col} IN ({','.join('?' * len(types))})"
            args += types
        if client_order_id is not None:
            sql += " AND client_order_id = ?"
            args.append(client_order_id)
        if symbol is not None:
            sql += " AND symbol = ?"
            args.append(symbol)
        if since is not None:
            sql += " AND ts >= ?"
            args.append(since.isoformat())
        for seq, ts, type_, cid, sym, payload in self._require().execute(
                sql + " ORDER BY seq", args):
            yield JournalRow(seq, datetime.fromisoformat(ts), type_, cid, sym,
                             json.loads(payload))

    def last(self, type_: str) -> JournalRow | None:
        """The newest row of ``type_``."""
        self.flush()
        got = self._require().execute(
            "SELECT seq, ts, type, client_order_id, symbol, payload FROM journal "
            "WHERE type = ? ORDER BY seq DESC LIMIT 1", (type_,)).fetchone()
        if got is None:
            return None
        seq, ts, t, cid, sym, payload = got
        return JournalRow(seq, datetime.fromisoformat(ts), t, cid, sym, json.loads(payload))

    def count_by_type(self, after_seq: int = 0) -> dict[str, int]:
        self.flush()
        return dict(self._require().execute(
            "SELECT type, COUNT(*) FROM journal WHERE seq > ? GROUP BY type", (after_seq,)))

    def sum_json(self, type_: str, path: str) -> int:
        """Sum of an integer payload field over rows of ``type_`` (e.g. filled shares)."""
        self.flush()
        got = self._require().execute(
            "SELECT COALESCE(SUM(json_extract(payload, ?)), 0) FROM journal WHERE type = ?",
            (path, type_)).fetchone()
        return int(got[0])

    def group_json(self, type_: str, path: str) -> dict[str, int]:
        """Row counts of ``type_`` grouped by a payload field (e.g. denials by reason)."""
        self.flush()
        return {str(k): n for k, n in self._require().execute(
            "SELECT json_extract(payload, ?), COUNT(*) FROM journal WHERE type = ? "
            "GROUP BY 1 ORDER BY 1", (path, type_))}

    def client_order_ids(self) -> set[str]:
        """Every order id the journal has an intent for (a tool's query: not bounded)."""
        self.flush()
        return {cid for (cid,) in self._require().execute(
            "SELECT client_order_id FROM journal WHERE type = 'OrderIntent'")}

    def has_intent(self, client_order_id: str) -> bool:
        """True if an intent with this id was ever journaled (an index lookup)."""
        if client_order_id in self._symbols:
            return True
        if client_order_id in self._buffered_intents:  # not a scan of the buffer
            return True
        got = self._require().execute(
            "SELECT 1 FROM journal WHERE client_order_id = ? AND +type = 'OrderIntent' LIMIT 1",
            (client_order_id,)).fetchone()
        return got is not None

    _SYMBOLS_KEPT = 4096

    def _remember(self, client_order_id: str, symbol: str) -> None:
        self._symbols[client_order_id] = symbol
        self._symbols.move_to_end(client_order_id)
        while len(self._symbols) > self._SYMBOLS_KEPT:
            self._symbols.popitem(last=False)

    def _symbol_of(self, client_order_id: str) -> str | None:
        sym = self._symbols.get(client_order_id)
        if sym is None and self._db is not None:
            got = self._db.execute(
                "SELECT symbol FROM journal WHERE client_order_id = ? AND +type = 'OrderIntent' "
                "LIMIT 1", (client_order_id,)).fetchone()
            if got is not None and got[0] is not None:
                sym = str(got[0])
                self._remember(client_order_id, sym)
        return sym


__all__ = ["JOURNAL_FILE", "Journal", "JournalRow"]
