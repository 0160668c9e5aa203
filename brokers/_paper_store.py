"""The paper account's book entries and their SQLite store.

The paper broker is an account, not a cache: cash, positions, orders (with status and
filled quantity), fills, id counters and last marks live in one SQLite file so a
restarted session continues where it stopped. Every state change is one transaction.
The file uses WAL with ``synchronous=NORMAL``: a commit survives a crash of the process
without an fsync per commit (a power loss may lose the last commits; acceptable for a
simulator, and it keeps the bar loop cheap).

Decimals are stored as TEXT (exact round trip), times as ISO-8601 TEXT.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from kernel.broker import BrokerOrder
from kernel.model import Fill, OrderSide, OrderType, Position, TimeInForce
from kernel.orders import OPEN, OrderStatus

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
    seq INTEGER PRIMARY KEY,
    client_order_id TEXT NOT NULL UNIQUE,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    qty INTEGER NOT NULL,
    order_type TEXT NOT NULL,
    time_in_force TEXT NOT NULL,
    limit_price TEXT,
    stop_price TEXT,
    reference_price TEXT NOT NULL,
    reserve_px TEXT NOT NULL,
    submitted_at TEXT NOT NULL,
    status TEXT NOT NULL,
    filled_qty INTEGER NOT NULL,
    filled_notional TEXT NOT NULL,
    fill_seq INTEGER NOT NULL,
    triggered INTEGER NOT NULL,
    expire_at TEXT
);
CREATE TABLE IF NOT EXISTS fills (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    execution_id TEXT NOT NULL UNIQUE,
    client_order_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    qty INTEGER NOT NULL,
    price TEXT NOT NULL,
    commission TEXT NOT NULL,
    ts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    symbol TEXT PRIMARY KEY,
    qty INTEGER NOT NULL,
    avg_price TEXT NOT NULL,
    realized_pnl TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS marks (symbol TEXT PRIMARY KEY, price REAL NOT NULL);
CREATE INDEX IF NOT EXISTS fills_ts ON fills(ts);
"""
_OPEN = tuple(sorted(s.value for s in OPEN))


@dataclass(slots=True)
class PaperOrder:
    """One order on the paper broker's books (mutable; the broker owns it).

    ``seq`` is the broker's sequence number (``broker_order_id`` derives from it and it
    orders working orders by time priority). ``reserve_px`` is the per-share price the
    buying-power reservation uses. ``triggered`` is set when a stop or stop-limit has
    triggered. ``expire_at`` is the first instant of the next New York date (day orders).
    """

    seq: int
    client_order_id: str
    symbol: str
    side: OrderSide
    qty: int
    order_type: OrderType
    time_in_force: TimeInForce
    limit_price: Decimal | None
    stop_price: Decimal | None
    reference_price: Decimal
    reserve_px: Decimal
    submitted_at: datetime
    status: OrderStatus = OrderStatus.NEW
    filled_qty: int = 0
    filled_notional: Decimal = Decimal(0)
    fill_seq: int = 0
    triggered: bool = False
    expire_at: datetime | None = None
    reserve: Decimal = Decimal(0)  # current reservation; derived, not stored
    # The stored columns that never change after submission (seq .. submitted_at, and
    # expire_at), encoded by the first save: an order is saved at submission and again
    # at each fill, cancel or expiry.
    fixed: tuple[tuple[Any, ...], str | None] | None = field(default=None, repr=False,
                                                             compare=False)

    @property
    def broker_order_id(self) -> str:
        return f"paper-{self.seq}"

    @property
    def leaves_qty(self) -> int:
        return self.qty - self.filled_qty

    def view(self) -> BrokerOrder:
        """The order as ``Broker.get_order`` reports it."""
        return BrokerOrder(
            client_order_id=self.client_order_id, broker_order_id=self.broker_order_id,
            symbol=self.symbol, side=self.side, qty=self.qty, order_type=self.order_type,
            time_in_force=self.time_in_force, status=self.status, filled_qty=self.filled_qty,
            filled_avg_price=self.filled_notional / self.filled_qty if self.filled_qty else None,
            submitted_at=self.submitted_at, limit_price=self.limit_price,
            stop_price=self.stop_price,
        )


@dataclass(slots=True)
class StoredAccount:
    """Everything ``PaperStore.load`` returns for a store that already holds an account."""

    cash: Decimal
    order_seq: int
    orders: list[PaperOrder]
    fills: list[Fill]
    positions: list[Position]
    marks: dict[str, float]


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _txt(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _order_row(o: PaperOrder) -> tuple[Any, ...]:
    """The ``orders`` row of ``o``; the columns fixed at submission are encoded once."""
    fixed = o.fixed
    if fixed is None:
        fixed = o.fixed = (
            (o.seq, o.client_order_id, o.symbol, o.side.value, o.qty, o.order_type.value,
             o.time_in_force.value, _txt(o.limit_price), _txt(o.stop_price),
             str(o.reference_price), str(o.reserve_px), o.submitted_at.isoformat()),
            o.expire_at.isoformat() if o.expire_at else None)
    head, expire = fixed
    return (*head, o.status.value, o.filled_qty, str(o.filled_notional), o.fill_seq,
            int(o.triggered), expire)


class PaperStore:
    """A paper account in one SQLite file. Use ``open``; every ``save`` is one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: Path) -> PaperStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit BEGIN/COMMIT in ``save``.
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def load(self, *, everything: bool = True) -> StoredAccount | None:
        """The stored account, or None when the file is new. Without ``everything`` (the
        broker's own start-up) only the open orders and no fills are read: the rest stay
        on disk and are looked up when asked for (``order``, ``fills_since``)."""
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if "cash" not in meta:
            return None
        where = "" if everything else (
            f" WHERE status IN ({','.join('?' * len(_OPEN))})")
        orders = [self._order(r) for r in self._conn.execute(
            f"SELECT * FROM orders{where} ORDER BY seq", () if everything else _OPEN)]
        fills = [self._fill(r) for r in self._conn.execute("SELECT * FROM fills ORDER BY n")
                 ] if everything else []
        positions = [
            Position(r[0], r[1], Decimal(r[2]), Decimal(r[3]))
            for r in self._conn.execute("SELECT * FROM positions ORDER BY symbol")
        ]
        marks = dict(self._conn.execute("SELECT symbol, price FROM marks").fetchall())
        return StoredAccount(Decimal(meta["cash"]), int(meta["order_seq"]), orders, fills,
                             positions, marks)

    def order(self, client_order_id: str) -> PaperOrder | None:
        """One order by client order id, in any status."""
        r = self._conn.execute("SELECT * FROM orders WHERE client_order_id = ?",
                               (client_order_id,)).fetchone()
        return None if r is None else self._order(r)

    def fills_since(self, since: datetime) -> list[Fill]:
        """Fills with ``ts >= since``, oldest first (an index range scan)."""
        return [self._fill(r) for r in self._conn.execute(
            "SELECT * FROM fills WHERE ts >= ? ORDER BY n", (since.isoformat(),))]

    @staticmethod
    def _fill(r: tuple[Any, ...]) -> Fill:
        return Fill(execution_id=r[1], client_order_id=r[2], symbol=r[3], side=OrderSide(r[4]),
                    qty=r[5], price=Decimal(r[6]), commission=Decimal(r[7]),
                    ts=datetime.fromisoformat(r[8]))

    @staticmethod
    def _order(r: tuple[Any, ...]) -> PaperOrder:
        (seq, cid, symbol, side, qty, otype, tif, limit_px, stop_px, ref_px, reserve_px,
         submitted, status, filled_qty, filled_notional, fill_seq, triggered, expire_at) = r
        return PaperOrder(
            seq=seq, client_order_id=cid, symbol=symbol, side=OrderSide(side), qty=qty,
            order_type=OrderType(otype), time_in_force=TimeInForce(tif),
            limit_price=_dec(limit_px), stop_price=_dec(stop_px),
            reference_price=Decimal(ref_px), reserve_px=Decimal(reserve_px),
            submitted_at=datetime.fromisoformat(submitted), status=OrderStatus(status),
            filled_qty=filled_qty, filled_notional=Decimal(filled_notional),
            fill_seq=fill_seq, triggered=bool(triggered),
            expire_at=datetime.fromisoformat(expire_at) if expire_at else None,
        )

    def save(
        self,
        *,
        cash: Decimal,
        order_seq: int,
        orders: Iterable[PaperOrder] = (),
        fills: Iterable[Fill] = (),
        positions: Iterable[Position] = (),
        marks: Iterable[tuple[str, float]] = (),
    ) -> None:
        """Write changed rows and the counters in one transaction (all or nothing)."""
        c = self._conn
        c.execute("BEGIN")
        try:
            c.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [("cash", str(cash)), ("order_seq", str(order_seq)),
                 ("schema", SCHEMA_VERSION)],
            )
            c.executemany(
                "INSERT OR REPLACE INTO orders VALUES "
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_order_row(o) for o in orders],
            )
            c.executemany(
                "INSERT INTO fills (execution_id, client_order_id, symbol, side, qty, price, "
                "commission, ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(f.execution_id, f.client_order_id, f.symbol, f.side.value, f.qty,
                  str(f.price), str(f.commission), f.ts.isoformat()) for f in fills],
            )
            c.executemany(
                "INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)",
                [(p.symbol, p.qty, str(p.avg_price), str(p.realized_pnl)) for p in positions],
            )
            c.executemany("INSERT OR REPLACE INTO marks VALUES (?, ?)", list(marks))
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")
