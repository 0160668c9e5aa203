"""Orders and their state machine.

``OrderStatus`` is an enum; ``ORDER_TRANSITIONS`` lists, for every status, which event
types it accepts and where each leads. ``Order.apply(event)`` is the only mutator: an
event not in the table raises ``InvalidOrderTransition``; a fill the order already has
changes nothing; a fill that would exceed the order quantity, or that overlaps another
fill, raises ``OverfillError``. Every accepted transition is recorded in ``Order.log``
(kept as (time, status, event) and rendered into ``OrderLogEntry`` rows when read: the
order path pays no note strings and no entry objects for a log rarely looked at).

Fill identity: a fill is (this order, the cumulative filled quantity after it). A fill
with ``cum_qty`` c and ``qty`` q covers the quantity interval (c - q, c]; brokers give
the same execution different ids on different channels (Alpaca's stream vs its FILL
activities), but never two executions ending at the same cumulative quantity. So a fill
is a duplicate when its execution id was seen (the fast path) *or* an equal interval
was taken; a missed earlier partial that arrives after a later one covers a free
interval and is taken. Fills without ``cum_qty`` (brokers that do not say) fall back
to the execution id alone.

A canceled, expired or replaced order still takes fills: an execution that happened
before the cancel can be reported after it (a dropped stream event found later over
REST). It stays in its status unless the fill completes it.

An abandoned order (the broker did not know it when it was looked for) comes back to
life if the broker shows it after all: a request that was still on its way when the
daemon was killed can land later. It then takes the broker's events like a new order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from kernel.errors import InvalidOrderTransition, OverfillError
from kernel.events import (
    OrderAbandoned,
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


class OrderStatus(enum.StrEnum):
    PENDING_NEW = "pending_new"
    ACCEPTED = "accepted"
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    REPLACED = "replaced"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    DONE_FOR_DAY = "done_for_day"
    ABANDONED = "abandoned"


S = OrderStatus
TERMINAL: frozenset[OrderStatus] = frozenset(
    {S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED, S.REPLACED, S.ABANDONED}
)
OPEN: frozenset[OrderStatus] = frozenset(set(S) - TERMINAL)

# A fill's target is decided by quantity, so the table names it FILL and ``_fill_target``
# resolves it; a cancel-reject returns to the working status the fills imply (WORKING).
_FILL = "fill"
_WORKING = "working"
_Target = OrderStatus | str

_ALWAYS_WHILE_OPEN: dict[type[OrderEvent], _Target] = {
    OrderFilled: _FILL,
    OrderCanceled: S.CANCELED,
    OrderExpired: S.EXPIRED,
}

# Late fills of an order that ended otherwise (see the module doc).
_LATE_FILL: dict[type[OrderEvent], _Target] = {OrderFilled: _FILL}

ORDER_TRANSITIONS: dict[OrderStatus, dict[type[OrderEvent], _Target]] = {
    S.PENDING_NEW: {
        **_ALWAYS_WHILE_OPEN,
        OrderAccepted: S.ACCEPTED,
        OrderNew: S.NEW,
        OrderRejected: S.REJECTED,
        OrderPendingCancel: S.PENDING_CANCEL,
        OrderAbandoned: S.ABANDONED,
    },
    S.ACCEPTED: {
        **_ALWAYS_WHILE_OPEN,
        OrderAccepted: S.ACCEPTED,
        OrderNew: S.NEW,
        OrderRejected: S.REJECTED,
        OrderPendingCancel: S.PENDING_CANCEL,
        OrderPendingReplace: S.PENDING_REPLACE,
        OrderDoneForDay: S.DONE_FOR_DAY,
    },
    S.NEW: {
        **_ALWAYS_WHILE_OPEN,
        OrderNew: S.NEW,
        OrderRejected: S.REJECTED,
        OrderPendingCancel: S.PENDING_CANCEL,
        OrderPendingReplace: S.PENDING_REPLACE,
        OrderReplaced: S.REPLACED,
        OrderDoneForDay: S.DONE_FOR_DAY,
    },
    S.PARTIALLY_FILLED: {
        **_ALWAYS_WHILE_OPEN,
        OrderPendingCancel: S.PENDING_CANCEL,
        OrderPendingReplace: S.PENDING_REPLACE,
        OrderReplaced: S.REPLACED,
        OrderDoneForDay: S.DONE_FOR_DAY,
    },
    S.PENDING_CANCEL: {
        **_ALWAYS_WHILE_OPEN,
        OrderPendingCancel: S.PENDING_CANCEL,
        OrderCancelRejected: _WORKING,
    },
    S.PENDING_REPLACE: {
        **_ALWAYS_WHILE_OPEN,
        OrderPendingReplace: S.PENDING_REPLACE,
        OrderReplaced: S.REPLACED,
        OrderCancelRejected: _WORKING,
    },
    S.DONE_FOR_DAY: {
        **_ALWAYS_WHILE_OPEN,
        OrderNew: S.NEW,
        OrderPendingCancel: S.PENDING_CANCEL,
    },
    **{s: {} for s in TERMINAL},
    S.CANCELED: _LATE_FILL,
    S.EXPIRED: _LATE_FILL,
    S.REPLACED: _LATE_FILL,
    S.ABANDONED: {  # it landed after all (see the module doc)
        OrderAccepted: S.ACCEPTED,
        OrderNew: S.NEW,
        OrderFilled: _FILL,
        OrderRejected: S.REJECTED,
        OrderCanceled: S.CANCELED,
        OrderExpired: S.EXPIRED,
    },
}
LATE_FILL_STATUSES: frozenset[OrderStatus] = frozenset({S.CANCELED, S.EXPIRED, S.REPLACED})


@dataclass(frozen=True, slots=True)
class OrderLogEntry:
    ts: datetime
    status: OrderStatus
    note: str


@dataclass(slots=True)
class Order:
    """One order's book entry. Change it only through ``apply``."""

    client_order_id: str
    symbol: str
    side: OrderSide
    qty: int
    order_type: OrderType
    time_in_force: TimeInForce
    created_ts: datetime
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    reference_price: Decimal | None = None
    signal_id: str | None = None
    broker_order_id: str = ""
    status: OrderStatus = OrderStatus.PENDING_NEW
    filled_qty: int = 0
    filled_notional: Decimal = Decimal(0)
    execution_ids: set[str] = field(default_factory=set)
    # cumulative filled qty after a fill -> that fill's qty (the fill identity)
    fill_ranges: dict[int, int] = field(default_factory=dict)
    # (ts, status, the event or a note): ``log`` renders it when somebody reads it.
    _trail: list[tuple[datetime, OrderStatus, Any]] = field(default_factory=list)

    @classmethod
    def from_intent(cls, intent: OrderIntent, created_ts: datetime | None = None) -> Order:
        """A new order for ``intent``. ``created_ts`` is the daemon's clock when it was
        submitted (it anchors broker queries); it defaults to the intent's own time."""
        created = created_ts or intent.ts
        order = cls(
            client_order_id=intent.client_order_id,
            symbol=intent.symbol,
            side=intent.side,
            qty=intent.qty,
            order_type=intent.order_type,
            time_in_force=intent.time_in_force,
            created_ts=created,
            limit_price=intent.limit_price,
            stop_price=intent.stop_price,
            reference_price=intent.reference_price,
            signal_id=intent.signal.id if intent.signal else None,
        )
        order._trail.append((created, OrderStatus.PENDING_NEW, "created"))
        return order

    @property
    def log(self) -> list[OrderLogEntry]:
        """Every accepted transition, oldest first (built on each read)."""
        return [OrderLogEntry(ts, status, _note(what)) for ts, status, what in self._trail]

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def leaves_qty(self) -> int:
        return 0 if self.status in TERMINAL else self.qty - self.filled_qty

    @property
    def avg_fill_price(self) -> Decimal | None:
        return self.filled_notional / self.filled_qty if self.filled_qty else None

    def changes_with(self, event: OrderEvent) -> bool:
        """Whether ``event`` is legal in the current status and would change the order: a
        status the order already has is a repeat (fills are judged by ``apply`` itself).
        Adapters filter streams that replay and reorder with it before ``apply``."""
        target = ORDER_TRANSITIONS[self.status].get(type(event))
        return target is not None and (target != self.status or isinstance(event, OrderFilled))

    def apply(self, event: OrderEvent) -> bool:
        """Apply a broker event; returns False when it was a duplicate fill (no change).

        Raises:
            InvalidOrderTransition: the event is not legal in the current status.
            OverfillError: the fill would exceed the order quantity.
        """
        if isinstance(event, OrderFilled) and self.has_fill(event.fill):
            return False
        target = ORDER_TRANSITIONS[self.status].get(type(event))
        if target is None:
            raise InvalidOrderTransition(
                f"{type(event).__name__} not allowed in status {self.status}",
                client_order_id=self.client_order_id,
            )
        if isinstance(event, OrderFilled):
            target = self._take_fill(event)
        elif target == _WORKING:
            target = S.PARTIALLY_FILLED if self.filled_qty else S.NEW
        if isinstance(event, OrderAccepted | OrderNew) and event.broker_order_id:
            self.broker_order_id = event.broker_order_id
        assert isinstance(target, OrderStatus)
        self.status = target
        self._trail.append((event.ts, target, event))
        return True

    def has_fill(self, fill: Fill) -> bool:
        """True when the order has taken this execution already (see the module doc)."""
        if fill.execution_id in self.execution_ids:
            return True
        c = fill.cum_qty
        return c is not None and self.fill_ranges.get(c) == fill.qty

    def _take_fill(self, event: OrderFilled) -> OrderStatus:
        fill = event.fill
        if fill.qty <= 0 or self.filled_qty + fill.qty > self.qty:
            raise OverfillError(
                f"fill {fill.execution_id} qty {fill.qty} with {self.filled_qty} of "
                f"{self.qty} already filled",
                client_order_id=self.client_order_id,
            )
        if fill.cum_qty is not None:
            self._check_range(fill)
            self.fill_ranges[fill.cum_qty] = fill.qty
        self.execution_ids.add(fill.execution_id)
        self.filled_qty += fill.qty
        self.filled_notional += fill.price * fill.qty
        done = self.filled_qty == self.qty
        target: OrderStatus
        # A fill on a pending cancel/replace leaves the request pending unless it completes;
        # a late fill leaves an ended order ended.
        if not done and self.status in (S.PENDING_CANCEL, S.PENDING_REPLACE,
                                        *LATE_FILL_STATUSES):
            target = self.status
        else:
            target = S.FILLED if done else S.PARTIALLY_FILLED
        return target

    def _check_range(self, fill: Fill) -> None:
        """The fill's quantity interval must lie within the order and overlap no other."""
        c, q = fill.cum_qty, fill.qty
        assert c is not None
        lo = c - q
        overlap = next((k for k, n in self.fill_ranges.items() if lo < k and k - n < c), None)
        if lo < 0 or c > self.qty or overlap is not None:
            raise OverfillError(
                f"fill {fill.execution_id} covers ({lo}, {c}] of {self.qty}, which "
                f"{'overlaps a fill ending at ' + str(overlap) if overlap else 'is outside'}"
                " the order", client_order_id=self.client_order_id)


def _note(what: Any) -> str:
    """A log entry's note: its text, a fill's description, or the event's type."""
    if isinstance(what, str):
        return what
    if isinstance(what, OrderFilled):
        f = what.fill
        return f"fill {f.qty}@{f.price} cum={f.cum_qty} exec={f.execution_id}"
    return type(what).__name__
