"""Shadow order book of the IB adapter: TWS messages in, legal domain events out.

TWS names an order three ways: ``orderRef`` (ours: the deterministic client order id,
echoed in ``openOrder`` and in every execution), ``permId`` (IB's account-wide id, known
from the first acknowledgement) and ``orderId`` (per client id and per connection, and
re-issued after a Gateway restart). Only the first two are kept across connections;
the orderId map is rebuilt for each connection and serves only messages that carry
nothing else (``error``, and ``orderStatus`` before the permId is known).

The tracker keeps a private ``kernel.orders.Order`` per client order id and runs every
candidate event through the daemon's transition table, so what it reports is legal and
never repeats:

* executions are de-duplicated by ``execId`` and by the order's cumulative quantity
  (``cumQty`` identifies a fill within an order whatever id a correction gives it), and
  capped by the largest cumulative quantity TWS has shown;
* **an execution is reported only with its commission**: it waits for the
  ``commissionReport`` with the same ``execId`` (normally milliseconds behind). When
  none comes within ``commission_wait`` the adapter asks for the executions again (TWS
  re-sends the reports); if still none, the fill is reported with a zero commission and
  the adapter raises an alert: the next reconciliation then sees the fee as cash drift
  and adopts the broker's cash. A fill is never dropped for want of its fee;
* a terminal status that arrives while fills (or their commissions) are missing is held
  back until they are reported, so an order never closes short of what filled.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import structlog

from brokers._ib_codes import IbCode, classify, is_refusal
from brokers._ib_map import (
    IbExecution,
    IbOrderView,
    IbStatus,
    domain_status,
    side_of_action,
)
from kernel.events import (
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderEvent,
    OrderFilled,
    OrderIntent,
    OrderNew,
    OrderPendingCancel,
    OrderRejected,
)
from kernel.model import Fill, OrderType, TimeInForce
from kernel.orders import TERMINAL, Order, OrderStatus

log = structlog.get_logger("brokers.ib")

_COMMISSIONS_KEPT = 10_000


class Ack(enum.StrEnum):
    """The first answer TWS gives to a placed order."""

    ACKED = "acked"
    REJECTED = "rejected"
    DUPLICATE_ID = "duplicate_id"


@dataclass(slots=True)
class _Pending:
    """An execution waiting for its commission report."""

    ex: IbExecution
    due: float
    asked: bool = False


@dataclass(slots=True)
class _Book:
    """What the tracker knows of one order beyond its ``Order``."""

    perm_id: int = 0
    order_ids: set[int] = field(default_factory=set)
    max_cum: int = 0  # the largest cumulative filled quantity TWS has shown
    floor: int = 0  # filled before we adopted it: executions up to here are counted
    cums: set[int] = field(default_factory=set)
    reason: str = ""  # the last error TWS gave for it
    held: OrderEvent | None = None  # a terminal event waiting for missing fills


class IbTracker:
    """Turns TWS order messages into domain events, each legal and reported once.

    Args:
        emit: receives every domain event (on the event loop).
        now: the injected clock, for event timestamps.
        mono: a monotonic clock in seconds, for commission deadlines.
        on_ack: told the first answer to an order placed through ``sent``.
        commission_wait: seconds a fill waits for its commission report.
        finished_kept: finished orders remembered (for de-duplication) before pruning.
    """

    def __init__(
        self, emit: Callable[[OrderEvent], None], *, now: Callable[[], datetime],
        mono: Callable[[], float], on_ack: Callable[[str, Ack], None],
        commission_wait: float = 3.0, finished_kept: int = 2000,
    ) -> None:
        self._emit_cb = emit
        self._now = now
        self._mono = mono
        self._on_ack = on_ack
        self._wait = commission_wait
        self._kept = finished_kept
        self.orders: dict[str, Order] = {}
        self._books: dict[str, _Book] = {}
        self._by_perm: dict[int, str] = {}
        self._by_oid: dict[int, str] = {}
        self._client_id = 0
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[str, _Pending] = {}
        self._commissions: OrderedDict[str, Decimal] = OrderedDict()
        # Every orderRef seen at the broker (open or completed): what submit checks
        # before it places anything. Bounded like the finished orders, times five.
        self._seen: OrderedDict[str, IbOrderView] = OrderedDict()

    # -- connection and registration -----------------------------------------------

    def new_connection(self, client_id: int) -> None:
        """OrderIds belong to one connection: forget them (a restarted Gateway re-issues
        them, and an old mapping would cross-wire a new order's messages)."""
        self._client_id = client_id
        self._by_oid.clear()
        for book in self._books.values():
            book.order_ids.clear()

    def track_intent(self, intent: OrderIntent) -> Order:
        order = self.orders.get(intent.client_order_id)
        if order is None:
            order = Order.from_intent(intent, created_ts=self._now())
            self.orders[intent.client_order_id] = order
            self._books[intent.client_order_id] = _Book()
        return order

    def sent(self, cid: str, order_id: int) -> None:
        """``cid`` was just placed under ``order_id`` on this connection."""
        self._by_oid[order_id] = cid
        self._books[cid].order_ids.add(order_id)

    def forget(self, cid: str) -> None:
        """Drop an order that never reached TWS."""
        self.orders.pop(cid, None)
        book = self._books.pop(cid, None)
        if book is not None:
            for oid in book.order_ids:
                self._by_oid.pop(oid, None)

    def restate(self, cid: str) -> None:
        """Report the acknowledgement the shadow order implies (for a caller that asks
        to place an order this book already has: its copy may never have heard back)."""
        order = self.orders[cid]
        now, perm = self._now(), order.broker_order_id
        if order.status is OrderStatus.ACCEPTED:
            self._emit_cb(OrderAccepted(cid, now, broker_order_id=perm))
        elif order.status is OrderStatus.REJECTED:
            self._emit_cb(OrderRejected(cid, now, reason=self._books[cid].reason or "rejected"))
        elif order.status is not OrderStatus.PENDING_NEW:
            self._emit_cb(OrderNew(cid, now, broker_order_id=perm))

    def at_broker(self, cid: str) -> IbOrderView | None:
        """The order as last seen at the broker (open or completed), if ever."""
        return self._seen.get(cid)

    def adopt(self, view: IbOrderView, filled: int) -> None:
        """Track an order first seen at the broker (open at connect). Nothing is reported
        now: reconciliation settles the daemon's books; later changes are reported."""
        cid = view.client_order_id
        self.remember(view)
        if cid in self.orders:
            return
        status = domain_status(view.status, filled, completed_status=view.completed_status)
        self.orders[cid] = Order(
            client_order_id=cid, symbol=view.symbol, side=side_of_action(view.action),
            qty=view.qty, order_type=_order_type(view.order_type),
            time_in_force=_tif(view.tif), created_ts=self._now(),
            limit_price=view.limit_price, stop_price=view.stop_price,
            broker_order_id=str(view.perm_id or ""), status=status, filled_qty=filled)
        self._books[cid] = _Book(max_cum=filled, floor=filled)
        self._route(cid, view.perm_id, view.order_id, view.client_id)

    def remember(self, view: IbOrderView) -> None:
        cid = view.client_order_id
        self._seen[cid] = view
        self._seen.move_to_end(cid)
        while len(self._seen) > self._kept * 5:
            self._seen.popitem(last=False)

    # -- TWS messages ----------------------------------------------------------------

    def on_open_order(self, view: IbOrderView) -> None:
        self.apply_snapshot(view, None)

    def on_completed(self, view: IbOrderView) -> None:
        self.apply_snapshot(view, view.filled)

    def apply_snapshot(self, view: IbOrderView, filled: int | None) -> None:
        """An order as TWS describes it now (``filled`` None: not said): routes, the
        cumulative quantity, and the status as an event."""
        self.remember(view)
        order = self.orders.get(view.client_order_id)
        if order is None:
            return
        cid = order.client_order_id
        self._route(cid, view.perm_id, 0 if view.completed else view.order_id, view.client_id)
        if filled is not None:
            self._raise_cum(order, filled)
        self._on_ack(cid, Ack.ACKED)
        self._apply_status(order, view.status, view.completed_status)

    def on_status(self, st: IbStatus) -> None:
        cid = self._by_perm.get(st.perm_id) if st.perm_id else None
        if cid is None and st.client_id == self._client_id:
            cid = self._by_oid.get(st.order_id)
        order = self.orders.get(cid) if cid else None
        if order is None:
            return
        self._route(order.client_order_id, st.perm_id, 0, 0)
        self._raise_cum(order, st.filled)
        self._on_ack(order.client_order_id, Ack.ACKED)
        self._apply_status(order, st.status, "")

    def on_execution(self, ex: IbExecution, *, live: bool = True) -> None:
        """One execution, live (``live``) or in a reply to a request for executions
        (where repeats of what was reported are expected, and logged at debug)."""
        order = self.orders.get(ex.client_order_id)
        if order is None:
            return
        cid, book = order.client_order_id, self._books[order.client_order_id]
        self._route(cid, ex.perm_id, 0, 0)
        self._raise_cum(order, ex.cum_qty)
        self._on_ack(cid, Ack.ACKED)
        if ex.exec_id in order.execution_ids or ex.exec_id in self._pending:
            (log.info if live else log.debug)("ib.duplicate_execution", client_order_id=cid,
                                              execution_id=ex.exec_id)
            return
        if ex.cum_qty and (ex.cum_qty in book.cums or ex.cum_qty <= book.floor):
            log.info("ib.execution_seen", client_order_id=cid, execution_id=ex.exec_id,
                     cum_qty=ex.cum_qty, note="same fill under another execution id")
            return
        waiting = self._pending_qty(cid)
        if ex.shares <= 0 or order.filled_qty + waiting + ex.shares > book.max_cum:
            log.warning("ib.fill_exceeds_cumulative", client_order_id=cid,
                        execution_id=ex.exec_id, qty=ex.shares, reported=order.filled_qty,
                        waiting=waiting, cumulative=book.max_cum)
            return
        book.cums.add(ex.cum_qty)
        commission = self._commissions.get(ex.exec_id)
        if commission is not None:
            self._emit_fill(order, ex, commission)
        else:
            self._pending[ex.exec_id] = _Pending(ex, self._mono() + self._wait)

    def on_commission(self, exec_id: str, amount: Decimal) -> None:
        self._commissions[exec_id] = amount
        self._commissions.move_to_end(exec_id)
        while len(self._commissions) > _COMMISSIONS_KEPT:
            self._commissions.popitem(last=False)
        pending = self._pending.pop(exec_id, None)
        if pending is not None:
            order = self.orders.get(pending.ex.client_order_id)
            if order is not None:
                self._emit_fill(order, pending.ex, amount)

    def avg_fill_price(self, cid: str) -> Decimal | None:
        """The average price of the fills reported for ``cid``; None when not all of its
        fills went through this book (adopted partly filled) or none did."""
        order, book = self.orders.get(cid), self._books.get(cid)
        if order is None or book is None or book.floor or not order.filled_qty:
            return None
        return order.avg_fill_price

    def commission_of(self, exec_id: str) -> Decimal | None:
        return self._commissions.get(exec_id)

    def on_error(self, order_id: int, code: int, message: str) -> bool:
        """An error about an order placed on this connection; False if not ours."""
        cid = self._by_oid.get(order_id)
        order = self.orders.get(cid) if cid else None
        if order is None or cid is None:
            return False
        kind, reason = classify(code), f"IB {code}: {message}"
        refused = kind is IbCode.REJECTED or (order.status is OrderStatus.PENDING_NEW
                                              and is_refusal(code))
        if kind is IbCode.DUPLICATE_ID:
            # The id belongs to another order: unmap it, or that order's messages would
            # be taken for this one. The caller looks the orderRef up and places again.
            self._by_oid.pop(order_id, None)
            self._books[cid].order_ids.discard(order_id)
            self._on_ack(cid, Ack.DUPLICATE_ID)
        elif kind in (IbCode.WARNING, IbCode.INFO) and not refused:
            log.warning("ib.order_warning", client_order_id=cid, code=code, message=message)
        elif kind is IbCode.CANCELED:
            self._books[cid].reason = reason
            self._terminal(order, OrderCanceled(cid, self._now(), reason=reason))
        elif kind is IbCode.CANCEL_REFUSED:
            log.info("ib.cancel_refused", client_order_id=cid, code=code, message=message)
            self._emit(order, OrderCancelRejected(cid, self._now(), reason=reason))
        elif refused:
            self._books[cid].reason = reason
            self._on_ack(cid, Ack.REJECTED)
            if not order.filled_qty:
                self._terminal(order, OrderRejected(cid, self._now(), reason=reason))
        else:
            log.error("ib.order_error", client_order_id=cid, code=code, message=message)
        return True

    # -- what is missing -------------------------------------------------------------

    def has_gap(self, cid: str) -> bool:
        """TWS has shown more filled quantity than we have reported."""
        order, book = self.orders.get(cid), self._books.get(cid)
        return order is not None and book is not None and book.max_cum > order.filled_qty

    def missing_executions(self) -> list[Order]:
        """Open-or-held orders with filled quantity no known execution accounts for."""
        return [o for cid, o in self.orders.items()
                if self._books[cid].max_cum > o.filled_qty + self._pending_qty(cid)]

    def expire(self) -> tuple[list[IbExecution], list[IbExecution]]:
        """Fills overdue for their commission: (ask TWS again, report without one)."""
        now, ask, release = self._mono(), [], []
        for exec_id, p in list(self._pending.items()):
            if p.due > now:
                continue
            if not p.asked:
                p.asked, p.due = True, now + self._wait
                ask.append(p.ex)
                continue
            del self._pending[exec_id]
            order = self.orders.get(p.ex.client_order_id)
            if order is not None:
                log.error("ib.commission_missing", client_order_id=order.client_order_id,
                          execution_id=exec_id, waited_secs=2 * self._wait)
                self._emit_fill(order, p.ex, Decimal(0))
                release.append(p.ex)
        return ask, release

    def imminent(self) -> bool:
        """Reports are due any moment: an open market order (IB fills those at once in
        regular hours), a fill waiting for its commission, or a fill TWS has counted."""
        return bool(self._pending) or any(
            o.order_type is OrderType.MARKET or self._books[cid].max_cum > o.filled_qty
            for cid, o in self.orders.items() if o.status not in TERMINAL)

    def open_cids(self) -> list[str]:
        return [cid for cid, o in self.orders.items() if o.status not in TERMINAL]

    def order_id_of(self, cid: str) -> int | None:
        """The orderId of ``cid`` on this connection (to cancel it), if it has one."""
        book = self._books.get(cid)
        return max(book.order_ids) if book and book.order_ids else None

    # -- internals -------------------------------------------------------------------

    def _route(self, cid: str, perm_id: int, order_id: int, client_id: int) -> None:
        book = self._books[cid]
        if perm_id and not book.perm_id:
            book.perm_id = perm_id
            self._by_perm[perm_id] = cid
            self.orders[cid].broker_order_id = str(perm_id)
        if order_id and client_id == self._client_id and self._by_oid.get(order_id) != cid:
            self._by_oid[order_id] = cid
            book.order_ids.add(order_id)

    def _raise_cum(self, order: Order, cum: int) -> None:
        book = self._books[order.client_order_id]
        book.max_cum = min(max(book.max_cum, cum), order.qty)

    def _pending_qty(self, cid: str) -> int:
        return sum(p.ex.shares for p in self._pending.values() if p.ex.client_order_id == cid)

    def _apply_status(self, order: Order, ib_status: str, completed_status: str) -> None:
        cid, now = order.client_order_id, self._now()
        book = self._books[cid]
        status = domain_status(ib_status, book.max_cum, completed_status=completed_status)
        perm = str(book.perm_id or "")
        if status is OrderStatus.ACCEPTED:
            self._emit(order, OrderAccepted(cid, now, broker_order_id=perm))
        elif status in (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED):
            self._emit(order, OrderNew(cid, now, broker_order_id=perm))
        elif status is OrderStatus.PENDING_CANCEL:
            self._emit(order, OrderPendingCancel(cid, now))
        elif status is OrderStatus.CANCELED:
            why = book.reason or completed_status or f"IB status {ib_status}"
            self._terminal(order, OrderCanceled(cid, now, reason=why))
        elif status is OrderStatus.REJECTED:
            why = book.reason or completed_status or f"IB status {ib_status}"
            self._terminal(order, OrderRejected(cid, now, reason=why))

    def _terminal(self, order: Order, event: OrderEvent) -> None:
        cid = order.client_order_id
        if self.has_gap(cid):
            # Never close an order whose fills we have not all reported.
            self._books[cid].held = event
            log.info("ib.terminal_held", client_order_id=cid, domain_event=type(event).__name__)
            return
        if isinstance(event, OrderRejected) and order.status is OrderStatus.PARTIALLY_FILLED:
            event = OrderCanceled(cid, event.ts, reason=event.reason)
        self._emit(order, event)

    def _emit_fill(self, order: Order, ex: IbExecution, commission: Decimal) -> None:
        cid = order.client_order_id
        fill = Fill(execution_id=ex.exec_id, client_order_id=cid, symbol=order.symbol,
                    side=order.side, qty=ex.shares, price=ex.price, ts=ex.ts,
                    commission=commission, cum_qty=ex.cum_qty or None)
        self._emit(order, OrderFilled(cid, ex.ts, fill=fill))
        book = self._books.get(cid)
        if book is not None and book.held is not None and not self.has_gap(cid):
            held, book.held = book.held, None
            self._terminal(order, held)

    def _emit(self, order: Order, event: OrderEvent) -> bool:
        # Illegal here (stale, reordered), or a repeat that would change nothing.
        if not order.changes_with(event):
            log.debug("ib.event_ignored", client_order_id=order.client_order_id,
                      domain_event=type(event).__name__, status=str(order.status))
            return False
        if not order.apply(event):
            return False
        self._emit_cb(event)
        if not order.is_open:
            self._finish(order.client_order_id)
        return True

    def _finish(self, cid: str) -> None:
        self._finished[cid] = None
        while len(self._finished) > self._kept:
            old, _ = self._finished.popitem(last=False)
            self._prune(old)

    def _prune(self, cid: str) -> None:
        if any(p.ex.client_order_id == cid for p in self._pending.values()):
            return
        self.orders.pop(cid, None)
        book = self._books.pop(cid, None)
        if book is not None:
            self._by_perm.pop(book.perm_id, None)
            for oid in book.order_ids:
                if self._by_oid.get(oid) == cid:
                    del self._by_oid[oid]


def _order_type(ib_type: str) -> OrderType:
    return {"LMT": OrderType.LIMIT, "STP": OrderType.STOP,
            "STP LMT": OrderType.STOP_LIMIT}.get(ib_type, OrderType.MARKET)


def _tif(ib_tif: str) -> TimeInForce:
    try:
        return TimeInForce(ib_tif.lower())
    except ValueError:
        return TimeInForce.DAY


__all__ = ["Ack", "IbTracker"]
