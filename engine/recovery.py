"""Crash recovery: rebuild the session from the journal, then reconcile with the broker.

At start, before any signal is accepted:

1. **Orders** are rebuilt from their journaled intents and every order event after them,
   through ``Order.apply`` (so fills are de-duplicated by execution id), and handed to
   the ``OrderManager`` (``adopt``). A replayed signal therefore finds its deterministic
   ``client_order_id`` already known and is never sent twice.
2. **Books** (cash, positions with average cost and realized P&L, commissions, last
   prices) come from the newest ``BooksSnapshot`` plus every fill journaled after it.
3. **Counters**: orders today per symbol, start-of-day and peak equity (from the newest
   ``EquityMark``), the trading state (newest ``TradingStateChanged``), the session
   counters of ``tradingd status``, and the replay clock.
4. **Reconciliation** with the broker (``Reconciler.reconcile(startup=True)``): fills
   made while the daemon was down are applied and journaled; an intent journaled but
   never acknowledged is looked up by ``client_order_id`` and adopted if the broker has
   it, else marked ``OrderAbandoned`` (never re-sent); unexplained drift halts.
5. A new ``BooksSnapshot`` is written durably.

With an empty journal (first run) the broker's cash and positions are the books.

``EquityMarker`` journals an ``EquityMark`` on each risk tick: the equity curve of the
report, and the start-of-day / peak equity counters of the next recovery.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from engine.codec import EVENT_TYPES, decode
from engine.execution import OrderManager
from engine.journal import Journal
from engine.reconcile import Reconciler, books_snapshot
from engine.stats import SessionStats
from kernel.broker import Broker
from kernel.clock import Clock, ReplayClock
from kernel.errors import OrderError
from kernel.events import OrderEvent, OrderIntent, RiskTick
from kernel.model import Fill, Position
from kernel.orders import Order
from kernel.time import trading_day
from portfolio import Portfolio
from risk.marks import EquityMarks

log = structlog.get_logger("engine.recovery")

_TICK = Decimal("0.0001")
ORDER_EVENT_TYPES = tuple(
    name for name, cls in EVENT_TYPES.items()
    if issubclass(cls, OrderEvent) and name != "OrderSubmitted"
)


@dataclass(slots=True)
class JournalState:
    """What the journal says the session looked like when it stopped."""

    orders: dict[str, Order] = field(default_factory=dict)
    books: dict[str, Any] | None = None
    fills_replayed: int = 0
    last_mark: dict[str, Any] | None = None
    last_ts: datetime | None = None
    trading_state: str | None = None
    skipped_events: int = 0


def load_state(journal: Journal) -> JournalState:
    """Read the journal into a ``JournalState`` (orders, newest snapshot, marks)."""
    state = JournalState()
    for row in journal.rows(types=("OrderIntent", *ORDER_EVENT_TYPES)):
        if row.type == "OrderIntent":
            intent = decode(OrderIntent, row.payload)
            state.orders.setdefault(intent.client_order_id,
                                    Order.from_intent(intent, created_ts=row.ts))
            continue
        order = state.orders.get(row.client_order_id or "")
        if order is None:
            state.skipped_events += 1
            continue
        try:
            event = decode(EVENT_TYPES[row.type], row.payload)
            assert isinstance(event, OrderEvent)
            order.apply(event)
        except OrderError as exc:
            state.skipped_events += 1
            log.warning("recovery.event_skipped", seq=row.seq, type=row.type, error=str(exc))
    snap = journal.last("BooksSnapshot")
    if snap is not None:
        state.books = dict(snap.payload)
        state.books["fills"] = [
            r.payload["fill"] for r in journal.rows(types=("OrderFilled",), after_seq=snap.seq)]
    mark = journal.last("EquityMark")
    state.last_mark = mark.payload if mark else None
    if state.books is not None and mark is not None and snap is not None and mark.seq > snap.seq:
        state.books["prices"] = {**state.books.get("prices", {}), **mark.payload["prices"]}
    state.last_ts = mark.ts if mark else None
    change = journal.last("TradingStateChanged")
    state.trading_state = change.payload["new"] if change else None
    return state


def restore_books(portfolio: Portfolio, books: dict[str, Any]) -> int:
    """Set the portfolio to a snapshot, then book the fills journaled after it."""
    portfolio.load(
        Decimal(books["cash"]),
        [Position(s, int(p["qty"]), Decimal(p["avg_price"]), Decimal(p["realized_pnl"]))
         for s, p in books["positions"].items()],
        commissions=Decimal(books.get("commissions", "0")),
        fill_count=int(books.get("fill_count", 0)),
        prices=books.get("prices", {}),
    )
    fills = books.get("fills", [])
    for f in fills:
        portfolio.apply_fill(decode(Fill, f))
    return len(fills)


def restore_stats(stats: SessionStats, journal: Journal, last_mark: dict[str, Any] | None) -> None:
    """Counters of ``tradingd status`` from the journal (they count the state directory's
    whole life, so a restart shows the same numbers)."""
    counts = journal.count_by_type()
    stats.signals = counts.get("Signal", 0)
    stats.orders = counts.get("OrderSubmitted", 0)
    stats.fills = counts.get("OrderFilled", 0)
    stats.rejected = counts.get("OrderRejected", 0)
    stats.filled_shares = journal.sum_json("OrderFilled", "$.fill.qty")
    stats.denied = Counter(journal.group_json("OrderDenied", "$.reason"))
    stats.signal_rejects = Counter(journal.group_json("SignalRejected", "$.reason"))
    stats.bar_batches = int(last_mark.get("bars", 0)) if last_mark else 0


class EquityMarker:
    """Journals an ``EquityMark`` on each ``RiskTick`` (the report's equity curve) and
    keeps the equity marks the loss limits are measured from up to date. The marks are
    the risk components' own ``EquityMarks``: one copy, which recovery restores."""

    def __init__(self, journal: Journal | None, portfolio: Portfolio, stats: SessionStats,
                 clock: Clock, marks: EquityMarks | None = None) -> None:
        self._journal = journal
        self._portfolio = portfolio
        self._stats = stats
        self._clock = clock
        self.marks = marks if marks is not None else EquityMarks()

    @property
    def day(self) -> str:
        return self.marks.day

    @property
    def start_of_day_equity(self) -> Decimal | None:
        return self.marks.start_of_day

    @property
    def peak_equity(self) -> Decimal | None:
        return self.marks.peak

    def restore(self, mark: dict[str, Any] | None) -> None:
        if mark:
            self.marks.restore(mark.get("day", ""), Decimal(mark["start_of_day_equity"]),
                               Decimal(mark["peak_equity"]))

    def on_tick(self, tick: RiskTick) -> None:
        self.mark(tick.ts)

    def mark(self, ts: datetime) -> dict[str, Any]:
        p = self._portfolio
        equity = p.equity()
        day = trading_day(ts)
        self.marks.observe(equity, day)
        held = [v for v in p.positions.values() if v.qty]
        # unrealized = market value - cost of what is held (cheaper than per-symbol views)
        cost = sum((v.avg_price * v.qty for v in held), Decimal(0))
        payload = {
            "day": day, "equity": str(equity), "cash": str(p.cash),
            "gross_exposure": str(p.gross_exposure()), "net_exposure": str(p.net_exposure()),
            "realized_pnl": str(p.realized_pnl().quantize(_TICK)),
            "unrealized_pnl": str((p.net_exposure() - cost).quantize(_TICK)),
            "start_of_day_equity": str(self.start_of_day_equity),
            "peak_equity": str(self.peak_equity), "bars": self._stats.bar_batches,
            "prices": {v.symbol: p.last_price[v.symbol] for v in held
                       if v.symbol in p.last_price},
        }
        if self._journal is not None:
            self._journal.append("EquityMark", payload, ts=ts)
        return payload

    def counters(self) -> dict[str, str | None]:
        return {"start_of_day_equity": _s(self.start_of_day_equity),
                "peak_equity": _s(self.peak_equity)}


def _s(v: Decimal | None) -> str | None:
    return None if v is None else str(v.quantize(Decimal("0.01")))


@dataclass(slots=True)
class Recovered:
    """What recovery restored (for the status, the gate and the replay feed)."""

    first_run: bool
    orders: int
    open_orders: int
    fills_replayed: int
    trading_state: str | None
    resume_after: datetime | None


async def recover(
    *,
    journal: Journal,
    broker: Broker,
    orders: OrderManager,
    portfolio: Portfolio,
    stats: SessionStats,
    marker: EquityMarker,
    reconciler: Reconciler,
    clock: Clock,
) -> Recovered:
    """Rebuild from the journal and reconcile with the broker (see the module doc).

    Raises:
        BrokerError, TimeoutError: the broker could not be reached; the daemon stays
            not ready (the gate denies RECONCILING) and the next tick retries.
    """
    state = load_state(journal)
    first_run = state.books is None
    if state.last_ts is not None and isinstance(clock, ReplayClock):
        clock.set(state.last_ts)
    for order in state.orders.values():
        orders.adopt(order)
    _restore_counters(orders, state, clock)
    fills = 0
    if state.books is not None:
        fills = restore_books(portfolio, state.books)
    else:
        account = await broker.account()
        portfolio.restore(account.cash, await broker.positions())
    restore_stats(stats, journal, state.last_mark)
    marker.restore(state.last_mark)
    open_now = sum(1 for o in state.orders.values() if o.is_open)
    log.info("recovery.loaded", first_run=first_run, orders=len(state.orders),
             open_orders=open_now, fills_replayed=fills, cash=str(portfolio.cash),
             positions={s: p.qty for s, p in portfolio.positions.items() if p.qty},
             trading_state=state.trading_state, skipped_events=state.skipped_events)
    report = await reconciler.reconcile("start", gate=True, startup=True)
    journal.append("BooksSnapshot", books_snapshot(portfolio), ts=clock.now(), durable=True)
    log.info("recovery.done", explained=len(report.of("explained")),
             unexplained=len(report.of("unexplained")), cash=str(portfolio.cash),
             equity=str(portfolio.equity()))
    return Recovered(first_run, len(state.orders), open_now, fills, state.trading_state,
                     state.last_ts)


def _restore_counters(orders: OrderManager, state: JournalState, clock: Clock) -> None:
    day = trading_day(clock.now())
    per_symbol: Counter[str] = Counter(
        o.symbol for o in state.orders.values() if trading_day(o.created_ts) == day)
    orders.restore_counters(day, dict(per_symbol))


__all__ = [
    "EquityMarker",
    "JournalState",
    "Recovered",
    "load_state",
    "recover",
    "restore_books",
    "restore_stats",
]
