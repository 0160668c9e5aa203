"""Crash recovery: rebuild the session from the journal, then reconcile with the broker.

At start, before any signal is accepted:

1. **Orders** are rebuilt from their journaled intents and every order event after them,
   through ``Order.apply`` (so fills are de-duplicated), reading the journal as a stream:
   the open orders and the ``retain_done`` most recently ended ones are handed to the
   ``OrderManager`` (``adopt``); older ones stay on disk, where the order manager finds
   them through ``JournalHistory`` when asked. A replayed signal therefore finds its
   deterministic ``client_order_id`` known and is never sent twice, and memory does not
   grow with the journal.
2. **Books** (cash, positions with average cost and realized P&L, commissions, last
   prices) come from the newest ``BooksSnapshot`` plus every fill journaled after it.
3. **Counters**: orders today per symbol, start-of-day and peak equity (from the newest
   ``EquityMark``), the trading state (newest ``TradingStateChanged``), the execution
   mode (newest ``ExecutionModeChanged``) and the approvals still waiting
   (``ApprovalPending`` rows without an ``ApprovalResolved``), the session counters of
   ``tradingd status``, and the replay clock.
4. **Reconciliation** with the broker (``Reconciler.reconcile(startup=True)``): fills
   made while the daemon was down are applied and journaled; an intent journaled but
   never acknowledged is looked up by ``client_order_id`` and adopted if the broker has
   it, else marked ``OrderAbandoned`` (never re-sent); unexplained drift halts.
5. A new ``BooksSnapshot`` is written durably.

With an empty journal (first run) the broker's cash and positions are the books.

``EquityMarker`` journals an ``EquityMark`` on each risk tick: the equity curve of the
report, and the start-of-day / peak equity counters of the next recovery. The loss
limits are measured from those marks, never from a configured starting cash: the
start of day is the broker's own start-of-day equity when it reports one (Alpaca's
``last_equity``, re-read on every reconciliation), and the session's base is the first
mark taken once the books are confirmed with the broker.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
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
from kernel.events import ApprovalPending, OrderEvent, OrderIntent, RiskTick
from kernel.model import AccountSnapshot, Fill, Position
from kernel.orders import Order
from kernel.time import trading_day
from portfolio import Portfolio
from risk.marks import EquityMarks
from risk.modes import ExecutionModes, PendingApproval

log = structlog.get_logger("engine.recovery")

_TICK = Decimal("0.0001")
ORDER_EVENT_TYPES = tuple(
    name for name, cls in EVENT_TYPES.items()
    if issubclass(cls, OrderEvent) and name != "OrderSubmitted"
)


RETAIN_DONE = 1000  # ended orders rebuilt into memory (as the order manager keeps)


@dataclass(slots=True)
class JournalState:
    """What the journal says the session looked like when it stopped."""

    orders: dict[str, Order] = field(default_factory=dict)
    orders_total: int = 0
    today: Counter[str] = field(default_factory=Counter)  # intents per symbol, ``day``
    day: str = ""
    books: dict[str, Any] | None = None
    fills_replayed: int = 0
    last_mark: dict[str, Any] | None = None
    last_ts: datetime | None = None
    trading_state: str | None = None
    execution_mode: str | None = None
    approvals: list[PendingApproval] = field(default_factory=list)
    approval_ids: list[str] = field(default_factory=list)  # the highest id ever given
    skipped_events: int = 0


class JournalHistory:
    """The ``OrderHistory`` of the order manager: orders that left memory, from disk."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def known(self, client_order_id: str) -> bool:
        return self._journal.has_intent(client_order_id)

    def load(self, client_order_id: str) -> Order | None:
        return load_order(self._journal, client_order_id)

    def has_fill(self, client_order_id: str, fill: Fill) -> bool:
        """The journaled fills of the order against ``fill``'s identity (the same
        execution id, or the same quantity ending at the same cumulative quantity), as
        ``Order.has_fill`` judges it: one indexed read, no rebuild of the order."""
        for row in self._journal.rows(types=("OrderFilled",), client_order_id=client_order_id):
            taken = row.payload["fill"]
            if taken["execution_id"] == fill.execution_id or (
                    fill.cum_qty is not None and taken.get("cum_qty") == fill.cum_qty
                    and taken["qty"] == fill.qty):
                return True
        return False


def load_order(journal: Journal, client_order_id: str) -> Order | None:
    """One order rebuilt from its intent and events (None if it has no intent)."""
    order: Order | None = None
    for row in journal.rows(types=("OrderIntent", *ORDER_EVENT_TYPES),
                            client_order_id=client_order_id):
        order = _apply_row(order, row, None)
    return order


def _apply_row(order: Order | None, row: Any, state: JournalState | None) -> Order | None:
    if row.type == "OrderIntent":
        return order or Order.from_intent(decode(OrderIntent, row.payload), created_ts=row.ts)
    if order is None:
        if state is not None:
            state.skipped_events += 1
        return None
    try:
        event = decode(EVENT_TYPES[row.type], row.payload)
        assert isinstance(event, OrderEvent)
        order.apply(event)
    except OrderError as exc:
        if state is not None:
            state.skipped_events += 1
        log.warning("recovery.event_skipped", seq=row.seq, type=row.type, error=str(exc))
    return order


def load_state(journal: Journal, *, day: str = "",
               retain_done: int = RETAIN_DONE) -> JournalState:
    """Read the journal into a ``JournalState`` (orders, newest snapshot, marks, modes).

    Orders are rebuilt in one pass over the journal; an order that ends leaves the pass
    unless it is among the ``retain_done`` most recently ended, so memory is bounded by
    the open orders, not by the journal. ``day`` (a trading day) selects whose intents
    are counted per symbol (the per-day order limits).
    """
    state = JournalState(day=day)
    live: dict[str, Order] = {}
    done: OrderedDict[str, Order] = OrderedDict()
    for row in journal.rows(types=("OrderIntent", *ORDER_EVENT_TYPES)):
        cid = row.client_order_id or ""
        if row.type == "OrderIntent" and cid not in live and cid not in done:
            state.orders_total += 1
            if day and row.symbol and trading_day(row.ts) == day:
                state.today[row.symbol] += 1
        order = live.get(cid) or done.pop(cid, None)
        if order is None and row.type != "OrderIntent" and journal.has_intent(cid):
            continue  # a late event of an order that already left the pass: on disk
        order = _apply_row(order, row, state)
        if order is None:
            continue
        if order.is_open:
            live[cid] = order
        else:
            live.pop(cid, None)
            done[cid] = order
            if len(done) > retain_done:
                done.popitem(last=False)
    state.orders = {**done, **live}
    _load_books(journal, state)
    change = journal.last("TradingStateChanged")
    state.trading_state = change.payload["new"] if change else None
    mode = journal.last("ExecutionModeChanged")
    state.execution_mode = mode.payload["new"] if mode else None
    state.approvals, state.approval_ids = load_approvals(journal)
    return state


def _load_books(journal: Journal, state: JournalState) -> None:
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


def load_approvals(journal: Journal) -> tuple[list[PendingApproval], list[str]]:
    """Approvals queued and not yet approved, rejected or dropped (oldest first), and
    every approval id ever given (so a new one is never a reused one)."""
    waiting: dict[str, PendingApproval] = {}
    given: list[str] = []
    for row in journal.rows(types=("ApprovalPending", "ApprovalResolved")):
        aid = str(row.payload["approval_id"])
        if row.type == "ApprovalPending":
            p = decode(ApprovalPending, row.payload)
            waiting[aid] = PendingApproval(aid, p.intent, p.ts)
            given = [max(given[0], aid, key=_approval_seq)] if given else [aid]
        else:
            waiting.pop(aid, None)
    return list(waiting.values()), given


def _approval_seq(approval_id: str) -> int:
    digits = approval_id.lstrip("A")
    return int(digits) if digits.isdigit() else 0


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

    def anchor(self, account: AccountSnapshot) -> None:
        """Take the broker's start-of-day equity (``last_equity``) as today's base."""
        base = account.last_equity
        if base is None or base <= 0:
            return
        day = trading_day(self._clock.now())
        m = self.marks
        if m.day == day and m.start_of_day == base:
            return
        log.info("risk.start_of_day", day=day, start_of_day=str(base), was=str(m.start_of_day),
                 source="broker last_equity")
        peak = base if m.peak is None or base > m.peak else m.peak
        m.restore(day, base, peak)

    def start_session(self) -> None:
        """The session's first mark, once the books are the broker's (after recovery)."""
        self.marks.observe(self._portfolio.equity(), trading_day(self._clock.now()))

    def session_pnl(self, equity: Decimal) -> Decimal:
        """P&L since this session's first mark (zero before it)."""
        base = self.marks.session_start
        return equity - base if base is not None else Decimal(0)

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
    modes: ExecutionModes | None = None,
) -> Recovered:
    """Rebuild from the journal and reconcile with the broker (see the module doc).

    Raises:
        BrokerError, TimeoutError: the broker could not be reached; the daemon stays
            not ready (the gate denies RECONCILING) and the next tick retries.
    """
    mark = journal.last("EquityMark")
    if mark is not None and isinstance(clock, ReplayClock):
        clock.set(mark.ts)
    state = load_state(journal, day=trading_day(clock.now()))
    first_run = state.books is None
    orders.history = JournalHistory(journal)
    for order in state.orders.values():
        orders.adopt(order)
    orders.restore_counters(state.day, dict(state.today))
    if modes is not None and (state.execution_mode or state.approval_ids):
        modes.restore(state.execution_mode, state.approvals, used=state.approval_ids)
    fills = 0
    if state.books is not None:
        fills = restore_books(portfolio, state.books)
    else:
        account = await broker.account()
        portfolio.restore(account.cash, await broker.positions())
    restore_stats(stats, journal, state.last_mark)
    marker.restore(state.last_mark)
    open_now = sum(1 for o in state.orders.values() if o.is_open)
    log.info("recovery.loaded", first_run=first_run, orders=state.orders_total,
             in_memory=len(state.orders), open_orders=open_now, fills_replayed=fills,
             cash=str(portfolio.cash),
             positions={s: p.qty for s, p in portfolio.positions.items() if p.qty},
             trading_state=state.trading_state, execution_mode=state.execution_mode,
             approvals=len(state.approvals), skipped_events=state.skipped_events)
    reconciler.on_account = marker.anchor
    report = await reconciler.reconcile("start", gate=True, startup=True)
    marker.start_session()
    journal.append("BooksSnapshot", books_snapshot(portfolio), ts=clock.now(), durable=True)
    log.info("recovery.done", explained=len(report.of("explained")),
             unexplained=len(report.of("unexplained")), cash=str(portfolio.cash),
             equity=str(portfolio.equity()))
    return Recovered(first_run, state.orders_total, open_now, fills, state.trading_state,
                     state.last_ts)


__all__ = [
    "EquityMarker",
    "JournalHistory",
    "JournalState",
    "Recovered",
    "load_approvals",
    "load_order",
    "load_state",
    "recover",
    "restore_books",
    "restore_stats",
]
