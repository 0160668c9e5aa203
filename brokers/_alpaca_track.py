"""Shadow order book of the Alpaca adapter: Alpaca updates in, legal domain events out.

Alpaca's stream is a hint, not a ledger: events arrive duplicated, reordered, late, or
not at all (alpaca-protocol.md §7, §13). The tracker keeps a private
``kernel.orders.Order`` per open client order id and runs every candidate event through
the same transition table the daemon uses, so what it reports is legal for
``Order.apply`` and never repeats. It reports what the stream shows and decides nothing
else: what to book from REST, and what counts as drift, is the reconciler's.

* every fill carries its identity, the order's cumulative ``filled_qty`` after it
  (``Fill.cum_qty``), and is de-duplicated by execution id or by that identity;
* when Alpaca shows more filled quantity than the stream delivered (a lost
  ``partial_fill``), the tracker says so with a ``ReconcileRequested``; the reconciler
  fetches the missing execution over REST;
* an order leaves the tracker when it ends; later events for it are dropped (logged),
  and both the finished ids and the broker-id map are bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from brokers._alpaca_map import order_status, parse_ts, to_decimal, to_shares
from kernel.events import (
    Event,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDoneForDay,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderIntent,
    OrderNew,
    OrderPendingCancel,
    OrderPendingReplace,
    OrderRejected,
    OrderReplaced,
    ReconcileRequested,
)
from kernel.model import Fill, OrderSide, OrderType, TimeInForce
from kernel.orders import Order, OrderStatus

log = structlog.get_logger("brokers.alpaca")

_FILL_EVENTS = ("partial_fill", "fill")
_REMEMBERED = 4096  # finished ids and broker ids kept (late events are minutes late)


V = TypeVar("V")


class _Lru(OrderedDict[str, V]):
    """A dict that forgets its oldest entries beyond ``size``."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def put(self, key: str, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self._size:
            self.popitem(last=False)


class OrderTracker:
    """Turns Alpaca order updates into domain events, each legal and reported once.

    Args:
        emit: receives every domain event and every ``ReconcileRequested`` (on the loop).
        now: the injected clock, for event timestamps.
    """

    def __init__(self, emit: Callable[[Event], None], now: Callable[[], datetime]) -> None:
        self._emit_cb = emit
        self._now = now
        self.orders: dict[str, Order] = {}
        self.cid_by_broker_id: _Lru[str] = _Lru(_REMEMBERED)
        # ended orders: their status and the cumulative quantities their fills ended at
        self._finished: _Lru[tuple[str, frozenset[int]]] = _Lru(_REMEMBERED)
        self._replacing: dict[str, str] = {}  # old cid -> new cid of a replace in flight

    # -- registration --------------------------------------------------------------

    def track_intent(self, intent: OrderIntent) -> Order:
        order = self.orders.get(intent.client_order_id)
        if order is None:
            order = Order.from_intent(intent)
            self.orders[intent.client_order_id] = order
        return order

    def track_replacement(
        self, old_cid: str, new_cid: str, qty: int | None,
        limit_price: Decimal | None, stop_price: Decimal | None,
    ) -> Order:
        old = self.orders[old_cid]
        new = Order(
            client_order_id=new_cid, symbol=old.symbol, side=old.side,
            qty=(qty if qty is not None else old.qty) - old.filled_qty,
            order_type=old.order_type, time_in_force=old.time_in_force,
            created_ts=self._now(), limit_price=limit_price or old.limit_price,
            stop_price=stop_price or old.stop_price, reference_price=old.reference_price,
            signal_id=old.signal_id,
        )
        self.orders.setdefault(new_cid, new)
        self._replacing[old_cid] = new_cid
        return self.orders[new_cid]

    def adopt(self, o: dict[str, Any], *, before_fill: int = 0) -> Order:
        """Track an order first seen over REST or on the stream (e.g. placed in an
        earlier life). ``before_fill``: the quantity of the fill event that introduced
        it, which the shadow must not count yet."""
        cid = str(o["client_order_id"])
        if cid in self.orders:
            return self.orders[cid]
        filled = max(to_shares(o.get("filled_qty")) - before_fill, 0)
        status = order_status(str(o["status"])) or OrderStatus.NEW
        if before_fill or status not in (OrderStatus.ACCEPTED, OrderStatus.PENDING_NEW):
            status = OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.NEW
        order = Order(
            client_order_id=cid, symbol=str(o["symbol"]), side=OrderSide(o["side"]),
            qty=to_shares(o.get("qty")), order_type=OrderType(o.get("type") or o["order_type"]),
            time_in_force=TimeInForce(o["time_in_force"]),
            created_ts=parse_ts(o.get("submitted_at")) or self._now(),
            limit_price=to_decimal(o.get("limit_price")),
            stop_price=to_decimal(o.get("stop_price")), broker_order_id=str(o["id"]),
            status=status, filled_qty=filled,
            filled_notional=(to_decimal(o.get("filled_avg_price")) or Decimal(0)) * filled,
        )
        self.orders[cid] = order
        self.cid_by_broker_id.put(order.broker_order_id, cid)
        return order

    def forget(self, cid: str) -> None:
        order = self.orders.pop(cid, None)
        if order is not None:
            self.cid_by_broker_id.pop(order.broker_order_id, None)

    def open_cids(self) -> list[str]:
        return list(self.orders)

    # -- stream updates ----------------------------------------------------------------

    def on_trade_update(self, data: dict[str, Any]) -> None:
        """Apply one ``trade_updates`` payload."""
        event = str(data.get("event", ""))
        o = data.get("order") or {}
        cid = str(o.get("client_order_id", ""))
        finished = self._finished.get(cid)
        if finished is not None:
            if event in _FILL_EVENTS:  # an execution from before the end, maybe missed
                self._late_fill(finished[1], data)
            else:
                log.info("alpaca.late_event", client_order_id=cid, trade_event=event,
                         status=finished[0])
            return
        order = self.orders.get(cid)
        if order is None:
            if not o.get("id") or not o.get("symbol"):
                log.warning("alpaca.bad_update", trade_event=event)
                return
            qty = to_shares(data.get("qty")) if event in _FILL_EVENTS else 0
            order = self.adopt(o, before_fill=qty)
            log.info("alpaca.adopted_from_stream", client_order_id=cid, trade_event=event)
        self._note(order, o)
        if event in _FILL_EVENTS:
            self._stream_fill(order, data)
        elif event == "replaced":
            self._replaced(order, o)
        else:
            mapped = self._status_event(event, order, data)
            if mapped is None:
                log.warning("alpaca.unknown_event", client_order_id=cid, trade_event=event)
            else:
                self._emit(order, mapped)
        self._check_gap(order, o)

    def _note(self, order: Order, o: dict[str, Any]) -> None:
        if o.get("id"):
            self.cid_by_broker_id.put(str(o["id"]), order.client_order_id)
            if not order.broker_order_id:
                order.broker_order_id = str(o["id"])

    def _check_gap(self, order: Order, o: dict[str, Any]) -> None:
        """Alpaca shows more filled than the stream delivered: ask for a REST look."""
        shown = to_shares(o.get("filled_qty"))
        if shown > order.filled_qty:
            log.info("alpaca.fill_gap", client_order_id=order.client_order_id,
                     reported=order.filled_qty, cumulative=shown)
            self._emit_cb(ReconcileRequested(
                who="alpaca", why=f"stream delivered {order.filled_qty} of {shown} filled",
                ts=self._now(), client_order_id=order.client_order_id))

    def _replaced(self, order: Order, o: dict[str, Any]) -> None:
        cid = order.client_order_id
        new_cid = self.cid_by_broker_id.get(str(o.get("replaced_by") or ""))
        new_cid = new_cid or self._replacing.get(cid)
        if new_cid is None:
            self._emit_cb(ReconcileRequested(who="alpaca", why="replacement unknown",
                                             ts=self._now(), client_order_id=cid))
            return
        self._emit(order, OrderReplaced(cid, self._now(), new_client_order_id=new_cid))

    def _stream_fill(self, order: Order, data: dict[str, Any]) -> None:
        fill = self._fill_of(data)
        if fill is None:
            return
        if order.has_fill(fill):
            log.info("alpaca.duplicate_fill", client_order_id=order.client_order_id,
                     execution_id=fill.execution_id, cum_qty=fill.cum_qty)
            return
        self._emit(order, OrderFilled(order.client_order_id, fill.ts, fill=fill))

    def _late_fill(self, taken: frozenset[int], data: dict[str, Any]) -> None:
        fill = self._fill_of(data)
        if fill is None or fill.cum_qty in taken:
            return  # a replay of an execution the order has
        log.info("alpaca.late_fill", client_order_id=fill.client_order_id, cum_qty=fill.cum_qty)
        self._emit_cb(OrderFilled(fill.client_order_id, fill.ts, fill=fill))

    def _fill_of(self, data: dict[str, Any]) -> Fill | None:
        """The execution of a fill event, identified by the order's cumulative quantity
        after it (the payload's order is the order as of this execution)."""
        o = data.get("order") or {}
        exec_id = str(data.get("execution_id") or "")
        qty = to_shares(data.get("qty"))
        price = to_decimal(data.get("price"))
        cum = to_shares(o.get("filled_qty"))
        ts = parse_ts(data.get("timestamp")) or self._now()
        if not exec_id or qty <= 0 or price is None or cum < qty or not o.get("side"):
            log.warning("alpaca.bad_fill", client_order_id=str(o.get("client_order_id")))
            return None
        return Fill(execution_id=exec_id, client_order_id=str(o["client_order_id"]),
                    symbol=str(o["symbol"]), side=OrderSide(o["side"]), qty=qty, price=price,
                    ts=ts, cum_qty=cum)

    def _status_event(self, event: str, order: Order, data: dict[str, Any]) -> OrderEvent | None:
        cid, now = order.client_order_id, self._now()
        bid = order.broker_order_id
        match event:
            case "new":
                return OrderNew(cid, now, broker_order_id=bid)
            case "accepted" | "pending_new" | "accepted_for_bidding":
                return OrderAccepted(cid, now, broker_order_id=bid)
            case "canceled":
                return OrderCanceled(cid, now, reason=str(data.get("reason") or ""))
            case "expired":
                return OrderExpired(cid, now)
            case "rejected":
                return OrderRejected(cid, now, reason=str(data.get("reason") or "rejected"))
            case "pending_cancel":
                return OrderPendingCancel(cid, now)
            case "pending_replace":
                return OrderPendingReplace(cid, now)
            case "done_for_day":
                return OrderDoneForDay(cid, now)
            case "order_cancel_rejected" | "order_replace_rejected":
                return OrderCancelRejected(cid, now, reason=event)
        return None

    # -- REST snapshots ------------------------------------------------------------------

    def apply_snapshot(self, o: dict[str, Any]) -> None:
        """An order as a REST call returned it (the POST answer, an adoption after an
        ambiguous submit): report its acknowledgement or its end. Fills never come from
        here: a snapshot has no executions, only the reconciler books those."""
        cid = str(o["client_order_id"])
        order = self.orders.get(cid) or self.adopt(o)
        self._note(order, o)
        status = str(o.get("status", ""))
        if status in ("partially_filled", "filled"):
            if order.status in (OrderStatus.PENDING_NEW, OrderStatus.ACCEPTED):
                self._emit(order, OrderNew(cid, self._now(), broker_order_id=order.broker_order_id))
        elif status != "replaced":
            mapped = self._status_event(status, order, {"reason": "reported by REST"})
            if mapped is not None and order.status != order_status(status):
                self._emit(order, mapped)
        self._check_gap(order, o)

    # -- emission ------------------------------------------------------------------------

    def _emit(self, order: Order, event: OrderEvent) -> bool:
        # Illegal here (stale, reordered), or a repeat that would change nothing.
        if not order.changes_with(event):
            log.debug("alpaca.event_ignored", client_order_id=order.client_order_id,
                      domain_event=type(event).__name__, status=str(order.status))
            return False
        if not order.apply(event):
            return False
        self._emit_cb(event)
        if not order.is_open:
            self._finish(order)
        return True

    def _finish(self, order: Order) -> None:
        cid = order.client_order_id
        self.orders.pop(cid, None)
        self._replacing.pop(cid, None)
        self._finished.put(cid, (str(order.status), frozenset(order.fill_ranges)))
