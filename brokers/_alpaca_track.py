"""Shadow order book of the Alpaca adapter: Alpaca updates in, legal domain events out.

Alpaca's stream is a hint, not a ledger: events arrive duplicated, reordered, late, or
not at all (alpaca-protocol.md §7, §13). The tracker keeps a private
``kernel.orders.Order`` per client order id and runs every candidate event through the
same transition table the daemon uses, so what it reports is always legal for
``Order.apply`` and never repeats:

* fills are de-duplicated by ``execution_id`` and bounded by the largest cumulative
  ``filled_qty`` Alpaca has shown for the order (a replayed or doubled execution cannot
  push the total past what the broker says was filled);
* events for orders already terminal are dropped (logged);
* a terminal event that arrives while fills are still missing is held back: the order
  is flagged for a REST reconcile, which reports the missing fills first and then the
  terminal status.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from brokers._alpaca_map import (
    execution_id_of_activity,
    order_status,
    parse_ts,
    to_decimal,
    to_shares,
)
from kernel.events import (
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
)
from kernel.model import Fill, OrderSide, OrderType, TimeInForce
from kernel.orders import ORDER_TRANSITIONS, TERMINAL, Order, OrderStatus

log = structlog.get_logger("brokers.alpaca")

_TERMINAL_EVENTS = {"canceled", "expired", "replaced"}


class OrderTracker:
    """Turns Alpaca order updates into domain events, each legal and reported once.

    Args:
        emit: receives every domain event (called on the event loop).
        now: the injected clock, for event timestamps.
    """

    def __init__(self, emit: Callable[[OrderEvent], None], now: Callable[[], datetime]) -> None:
        self._emit_cb = emit
        self._now = now
        self.orders: dict[str, Order] = {}
        self.cid_by_broker_id: dict[str, str] = {}
        self._max_cum: dict[str, int] = {}
        self._replacing: dict[str, str] = {}  # old cid -> new cid of a replace in flight
        self.last_server_ts: datetime | None = None

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

    def adopt(self, o: dict[str, Any]) -> Order:
        """Track an order first seen over REST (e.g. still open at start-up)."""
        cid = str(o["client_order_id"])
        if cid in self.orders:
            return self.orders[cid]
        filled = to_shares(o.get("filled_qty"))
        avg = to_decimal(o.get("filled_avg_price")) or Decimal(0)
        order = Order(
            client_order_id=cid, symbol=str(o["symbol"]), side=OrderSide(o["side"]),
            qty=to_shares(o.get("qty")), order_type=OrderType(o.get("type") or o["order_type"]),
            time_in_force=TimeInForce(o["time_in_force"]),
            created_ts=parse_ts(o.get("submitted_at")) or self._now(),
            limit_price=to_decimal(o.get("limit_price")),
            stop_price=to_decimal(o.get("stop_price")), broker_order_id=str(o["id"]),
            status=order_status(str(o["status"])) or OrderStatus.NEW,
            filled_qty=filled, filled_notional=avg * filled,
        )
        self.orders[cid] = order
        self.cid_by_broker_id[order.broker_order_id] = cid
        self._max_cum[cid] = filled
        return order

    def forget(self, cid: str) -> None:
        order = self.orders.pop(cid, None)
        if order is not None:
            self.cid_by_broker_id.pop(order.broker_order_id, None)

    def open_cids(self) -> list[str]:
        return [cid for cid, o in self.orders.items() if o.status not in TERMINAL]

    def has_gap(self, cid: str) -> bool:
        """Alpaca has shown more filled quantity than we have reported."""
        order = self.orders.get(cid)
        return order is not None and self._max_cum.get(cid, 0) > order.filled_qty

    # -- stream updates ----------------------------------------------------------------

    def on_trade_update(self, data: dict[str, Any]) -> bool:
        """Apply one ``trade_updates`` payload. Returns True when the order needs a REST
        reconcile (fills are missing, or a replacement is unknown)."""
        event = str(data.get("event", ""))
        o = data.get("order") or {}
        cid = str(o.get("client_order_id", ""))
        self.last_server_ts = parse_ts(data.get("timestamp")) or self.last_server_ts
        order = self.orders.get(cid)
        if order is None:
            log.info("alpaca.unknown_order", client_order_id=cid, trade_event=event)
            return False
        self._note(order, o)
        if order.status in TERMINAL:
            log.info("alpaca.late_event", client_order_id=cid, trade_event=event,
                     status=str(order.status))
            return False
        if event in ("partial_fill", "fill"):
            self._stream_fill(order, data)
        elif event in _TERMINAL_EVENTS and self.has_gap(cid):
            log.info("alpaca.terminal_held", client_order_id=cid, trade_event=event)
        elif event == "replaced":
            new_cid = self.cid_by_broker_id.get(str(o.get("replaced_by") or ""))
            new_cid = new_cid or self._replacing.get(cid)
            if new_cid is None:
                return True
            self._emit(order, OrderReplaced(cid, self._now(), new_client_order_id=new_cid))
        else:
            mapped = self._status_event(event, order, data)
            if mapped is None:
                log.warning("alpaca.unknown_event", client_order_id=cid, trade_event=event)
            else:
                self._emit(order, mapped)
        return self.has_gap(cid)

    def _note(self, order: Order, o: dict[str, Any]) -> None:
        if o.get("id"):
            self.cid_by_broker_id[str(o["id"])] = order.client_order_id
            if not order.broker_order_id:
                order.broker_order_id = str(o["id"])
        cum = to_shares(o.get("filled_qty"))
        cid = order.client_order_id
        self._max_cum[cid] = min(max(self._max_cum.get(cid, 0), cum), order.qty)

    def _stream_fill(self, order: Order, data: dict[str, Any]) -> None:
        exec_id = str(data.get("execution_id") or "")
        qty = to_shares(data.get("qty"))
        price = to_decimal(data.get("price"))
        ts = parse_ts(data.get("timestamp")) or self._now()
        if not exec_id or qty <= 0 or price is None:
            log.warning("alpaca.bad_fill", client_order_id=order.client_order_id)
            return
        self._fill(order, exec_id, qty, price, ts)

    def _fill(self, order: Order, exec_id: str, qty: int, price: Decimal, ts: datetime) -> bool:
        cid = order.client_order_id
        if exec_id in order.execution_ids:
            log.info("alpaca.duplicate_fill", client_order_id=cid, execution_id=exec_id)
            return False
        if order.filled_qty + qty > self._max_cum.get(cid, 0):
            log.warning("alpaca.fill_exceeds_cumulative", client_order_id=cid,
                        execution_id=exec_id, qty=qty, reported=order.filled_qty,
                        cumulative=self._max_cum.get(cid, 0))
            return False
        fill = Fill(execution_id=exec_id, client_order_id=cid, symbol=order.symbol,
                    side=order.side, qty=qty, price=price, ts=ts)
        return self._emit(order, OrderFilled(cid, ts, fill=fill))

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

    def apply_snapshot(
        self,
        o: dict[str, Any],
        activities: list[dict[str, Any]] | None,
        *,
        replaced_by_cid: str | None = None,
        allow_synthetic: bool = False,
    ) -> None:
        """Bring the shadow order to an Alpaca REST snapshot: missing fills first (from
        FILL activities, by execution id, bounded by ``filled_qty``), then the status.

        With ``allow_synthetic`` a remaining fill gap that no activity explains is
        reported as one fill at the implied average price (last resort, logged).
        """
        cid = str(o["client_order_id"])
        order = self.orders.get(cid) or self.adopt(o)
        self._note(order, o)
        if order.status in TERMINAL:
            return
        acts = sorted((a for a in activities or () if a.get("order_id") == o.get("id")),
                      key=lambda a: to_shares(a.get("cum_qty")))
        for a in acts:
            price = to_decimal(a.get("price"))
            ts = parse_ts(a.get("transaction_time")) or self._now()
            if price is not None:
                self._fill(order, execution_id_of_activity(str(a["id"])),
                           to_shares(a.get("qty")), price, ts)
        if allow_synthetic and self.has_gap(cid):
            self._synthetic_fill(order, o)
        status = str(o.get("status", ""))
        if status in _TERMINAL_EVENTS and self.has_gap(cid):
            return  # never close an order whose fills we have not all reported
        if status == "replaced":
            if replaced_by_cid:
                self._emit(order, OrderReplaced(cid, self._now(),
                                                new_client_order_id=replaced_by_cid))
            return
        if status in ("partially_filled", "filled"):
            if order.status in (OrderStatus.PENDING_NEW, OrderStatus.ACCEPTED):
                self._emit(order, OrderNew(cid, self._now(), broker_order_id=order.broker_order_id))
            return
        mapped = self._status_event(status, order, {"reason": "reconciled"})
        if mapped is not None and order.status != order_status(status):
            self._emit(order, mapped)

    def _synthetic_fill(self, order: Order, o: dict[str, Any]) -> None:
        cum = self._max_cum.get(order.client_order_id, 0)
        avg = to_decimal(o.get("filled_avg_price"))
        missing = cum - order.filled_qty
        if avg is None or missing <= 0:
            return
        price = ((avg * cum - order.filled_notional) / missing).quantize(Decimal("0.0001"))
        exec_id = f"reconciled:{o.get('id')}:{cum}"
        log.warning("alpaca.synthetic_fill", client_order_id=order.client_order_id,
                    qty=missing, price=str(price))
        self._fill(order, exec_id, missing, price, self._now())

    # -- emission ------------------------------------------------------------------------

    def _emit(self, order: Order, event: OrderEvent) -> bool:
        target = ORDER_TRANSITIONS[order.status].get(type(event))
        # Illegal here (stale or reordered), or a repeat that would change nothing.
        if target is None or (target == order.status and not isinstance(event, OrderFilled)):
            log.debug("alpaca.event_ignored", client_order_id=order.client_order_id,
                      domain_event=type(event).__name__, status=str(order.status))
            return False
        if not order.apply(event):
            return False
        self._emit_cb(event)
        return True
