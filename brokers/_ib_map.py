"""Pure mappings between IB's order, status and execution records and domain values.

No ``ib_async`` import: the functions read the SDK's objects by attribute (duck typing)
or take the plain values of a TWS message, and return frozen views. Money becomes
``Decimal`` through the shortest float ``repr`` (the wire carries decimal text; ib_async
parses it to ``float``, and ``repr`` gives the same digits back), quantities ``int``.
IB marks "no value" with the largest double and the largest 32-bit int; both map to None.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from kernel.broker import BrokerFill, BrokerOrder
from kernel.events import OrderIntent
from kernel.model import OrderSide, OrderType, TimeInForce
from kernel.orders import OrderStatus

UNSET_DOUBLE = sys.float_info.max
UNSET_INTEGER = 2**31 - 1
EPOCH = datetime.fromtimestamp(0, UTC)

IB_ORDER_TYPE = {OrderType.MARKET: "MKT", OrderType.LIMIT: "LMT", OrderType.STOP: "STP",
                 OrderType.STOP_LIMIT: "STP LMT"}
_ORDER_TYPE = {v: k for k, v in IB_ORDER_TYPE.items()}
_TIF = {t.value.upper(): t for t in TimeInForce}
_ACCEPTED = frozenset({"PendingSubmit", "ApiPending", "PreSubmitted"})
_CANCELED = frozenset({"Cancelled", "ApiCancelled"})


def dec(value: Any) -> Decimal | None:
    """A price or amount as ``Decimal``; None for IB's unset marker, NaN, inf or junk."""
    if value is None or value == "":
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or value >= UNSET_DOUBLE:
            return None
        return Decimal(repr(value))
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def shares(value: Any) -> int:
    """Whole shares (IB sends quantities as decimals); unset or junk is 0."""
    d = dec(value)
    if d is None or d >= UNSET_INTEGER:
        return 0
    return int(d)


def side_of_action(action: str) -> OrderSide:
    return OrderSide.BUY if action.upper() in ("BUY", "BOT") else OrderSide.SELL


def exec_filter_time(since: datetime) -> str:
    """``ExecutionFilter.time``: executions after this moment, ``yyyymmdd-hh:mm:ss`` UTC."""
    return since.astimezone(UTC).strftime("%Y%m%d-%H:%M:%S")


def foreign_ref(perm_id: int) -> str:
    """The client order id given to an order without an orderRef (placed by hand in TWS
    or by another program): never one of ours, so reconciliation flags it."""
    return f"ib-perm-{perm_id}"


@dataclass(frozen=True, slots=True)
class IbOrderView:
    """An order as TWS describes it (``openOrder`` or ``completedOrder``)."""

    order_ref: str
    perm_id: int
    order_id: int
    client_id: int
    account: str
    symbol: str
    action: str
    qty: int
    order_type: str
    tif: str
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: str
    filled: int | None = None  # None: the message does not say (openOrder)
    completed: bool = False
    completed_status: str = ""

    @property
    def client_order_id(self) -> str:
        return self.order_ref or foreign_ref(self.perm_id)


@dataclass(frozen=True, slots=True)
class IbStatus:
    """One ``orderStatus`` message (it names the order by orderId and permId only)."""

    order_id: int
    perm_id: int
    client_id: int
    status: str
    filled: int
    remaining: int
    avg_fill_price: Decimal | None


@dataclass(frozen=True, slots=True)
class IbExecution:
    """One ``execDetails`` record. ``cum_qty`` is the order's filled quantity after it."""

    exec_id: str
    order_ref: str
    perm_id: int
    order_id: int
    client_id: int
    account: str
    symbol: str
    side: OrderSide
    shares: int
    price: Decimal
    cum_qty: int
    ts: datetime

    @property
    def client_order_id(self) -> str:
        return self.order_ref or foreign_ref(self.perm_id)


def order_view(contract: Any, order: Any, state: Any, *, completed: bool = False) -> IbOrderView:
    """From the ``(contract, order, orderState)`` of an ``openOrder``/``completedOrder``."""
    filled = shares(getattr(order, "filledQuantity", None)) if completed else None
    return IbOrderView(
        order_ref=str(order.orderRef or ""), perm_id=int(order.permId or 0),
        order_id=int(order.orderId or 0), client_id=int(order.clientId or 0),
        account=str(order.account or ""), symbol=str(contract.symbol or ""),
        action=str(order.action or ""), qty=shares(order.totalQuantity),
        order_type=str(order.orderType or ""), tif=str(order.tif or ""),
        limit_price=dec(order.lmtPrice), stop_price=dec(order.auxPrice),
        status=str(state.status or ""), filled=filled, completed=completed,
        completed_status=str(getattr(state, "completedStatus", "") or ""),
    )


def execution_of(contract: Any, execution: Any) -> IbExecution:
    """From the ``(contract, execution)`` of an ``execDetails``."""
    ts = execution.time
    when = ts.astimezone(UTC) if isinstance(ts, datetime) and ts.tzinfo else EPOCH
    return IbExecution(
        exec_id=str(execution.execId), order_ref=str(execution.orderRef or ""),
        perm_id=int(execution.permId or 0), order_id=int(execution.orderId or 0),
        client_id=int(execution.clientId or 0), account=str(execution.acctNumber or ""),
        symbol=str(contract.symbol or ""), side=side_of_action(str(execution.side)),
        shares=shares(execution.shares), price=dec(execution.price) or Decimal(0),
        cum_qty=shares(execution.cumQty), ts=when,
    )


def order_fields(intent: OrderIntent, *, account: str, outside_rth: bool) -> dict[str, Any]:
    """The ``ib_async.Order`` keyword arguments for an intent; the client order id goes in
    ``orderRef``. Raises ``ValueError`` when the prices do not fit the order type."""
    otype = intent.order_type
    if otype in (OrderType.LIMIT, OrderType.STOP_LIMIT) and intent.limit_price is None:
        raise ValueError(f"{otype} order needs a limit_price")
    if otype in (OrderType.STOP, OrderType.STOP_LIMIT) and intent.stop_price is None:
        raise ValueError(f"{otype} order needs a stop_price")
    if intent.qty <= 0:
        raise ValueError(f"quantity must be positive, got {intent.qty}")
    fields: dict[str, Any] = {
        "action": "BUY" if intent.side is OrderSide.BUY else "SELL",
        "totalQuantity": Decimal(intent.qty), "orderType": IB_ORDER_TYPE[otype],
        "tif": intent.time_in_force.value.upper(), "orderRef": intent.client_order_id,
        "account": account, "outsideRth": outside_rth, "transmit": True,
    }
    # Decimal prices go out as their exact text (the client sends str() of the field).
    if intent.limit_price is not None:
        fields["lmtPrice"] = intent.limit_price
    if intent.stop_price is not None:
        fields["auxPrice"] = intent.stop_price
    return fields


def domain_status(status: str, filled: int, *, completed_status: str = "") -> OrderStatus:
    """IB's order status (plus the filled quantity) as the domain status."""
    if status in _ACCEPTED:
        return OrderStatus.ACCEPTED
    if status == "Submitted":
        return OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.NEW
    if status == "PendingCancel":
        return OrderStatus.PENDING_CANCEL
    if status == "Filled":
        return OrderStatus.FILLED
    if status in _CANCELED:
        rejected = "reject" in completed_status.lower() and not filled
        return OrderStatus.REJECTED if rejected else OrderStatus.CANCELED
    if status == "Inactive":
        return OrderStatus.CANCELED if filled else OrderStatus.REJECTED
    return OrderStatus.PARTIALLY_FILLED if filled else OrderStatus.NEW


def broker_order(view: IbOrderView, *, filled: int, avg_price: Decimal | None,
                 submitted_at: datetime) -> BrokerOrder:
    """A ``BrokerOrder`` snapshot; ``broker_order_id`` is the permId (durable), never
    the orderId (per connection, and re-issued after a Gateway restart)."""
    return BrokerOrder(
        client_order_id=view.client_order_id, broker_order_id=str(view.perm_id or ""),
        symbol=view.symbol, side=side_of_action(view.action), qty=view.qty,
        order_type=_ORDER_TYPE.get(view.order_type, OrderType.MARKET),
        time_in_force=_TIF.get(view.tif.upper(), TimeInForce.DAY),
        status=domain_status(view.status, filled, completed_status=view.completed_status),
        filled_qty=filled, filled_avg_price=avg_price, submitted_at=submitted_at,
        limit_price=view.limit_price, stop_price=view.stop_price,
    )


def broker_fill(ex: IbExecution, commission: Decimal) -> BrokerFill:
    return BrokerFill(
        execution_id=ex.exec_id, client_order_id=ex.client_order_id, symbol=ex.symbol,
        side=ex.side, qty=ex.shares, price=ex.price, ts=ex.ts, commission=commission,
        cum_qty=ex.cum_qty, broker_order_id=str(ex.perm_id or ""),
    )


__all__ = ["IB_ORDER_TYPE", "IbExecution", "IbOrderView", "IbStatus", "broker_fill",
           "broker_order", "dec", "domain_status", "exec_filter_time", "execution_of",
           "foreign_ref", "order_fields", "order_view", "shares", "side_of_action"]
