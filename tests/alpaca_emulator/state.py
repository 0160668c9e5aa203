"""The emulated brokerage: orders, matching, positions and account math.

Pure and synchronous (no I/O): the server drives it and fans the trade updates it
produces out to the websocket clients. Money is ``Decimal`` throughout; quantities are
whole shares. Every state change that Alpaca would stream produces one
``(event, payload)`` through ``on_event``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

TERMINAL = {"filled", "canceled", "expired", "rejected", "replaced"}
# Alpaca answers most validation errors at POST /v2/orders with 422 and this code, the
# same code as a duplicate client_order_id: only the message tells them apart.
VALIDATION = 40010001
ORDER_TYPES = {"market", "limit", "stop", "stop_limit"}
TIFS = {"day", "gtc", "ioc", "fok", "opg", "cls"}


class EmulatorError(Exception):
    """An API error the server turns into an HTTP response."""

    def __init__(self, status: int, code: int | None, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message, **extra}
        if code is not None:
            self.body["code"] = code


def rfc3339(ts: datetime | None) -> str | None:
    """Alpaca style: UTC, nanosecond precision, ``Z``."""
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def dec(value: Any) -> Decimal:
    """Numbers arrive as JSON floats from the SDK and as strings from others."""
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def dstr(value: Decimal | None) -> str | None:
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return text


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"asset.{symbol}"))


@dataclass(slots=True)
class EmuOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str
    qty: int
    type: str
    time_in_force: str
    created_at: datetime
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    status: str = "accepted"
    updated_at: datetime | None = None
    filled_qty: int = 0
    filled_notional: Decimal = Decimal(0)
    filled_at: datetime | None = None
    canceled_at: datetime | None = None
    expired_at: datetime | None = None
    failed_at: datetime | None = None
    replaced_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    triggered: bool = False
    extended_hours: bool = False

    @property
    def open(self) -> bool:
        return self.status not in TERMINAL

    @property
    def leaves(self) -> int:
        return self.qty - self.filled_qty

    @property
    def avg_price(self) -> Decimal | None:
        if not self.filled_qty:
            return None
        return (self.filled_notional / self.filled_qty).quantize(Decimal("0.0001"))

    def to_json(self) -> dict[str, Any]:
        sell = self.side == "sell"
        return {
            "id": self.id,
            "client_order_id": self.client_order_id,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at or self.created_at),
            "submitted_at": rfc3339(self.created_at),
            "filled_at": rfc3339(self.filled_at),
            "expired_at": rfc3339(self.expired_at),
            "expires_at": None,
            "canceled_at": rfc3339(self.canceled_at),
            "failed_at": rfc3339(self.failed_at),
            "replaced_at": rfc3339(self.replaced_at),
            "replaced_by": self.replaced_by,
            "replaces": self.replaces,
            "asset_id": asset_id(self.symbol),
            "symbol": self.symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": str(self.qty),
            "filled_qty": str(self.filled_qty),
            "filled_avg_price": dstr(self.avg_price),
            "order_class": "",
            "order_type": self.type,
            "type": self.type,
            "side": self.side,
            "position_intent": "sell_to_close" if sell else "buy_to_open",
            "time_in_force": self.time_in_force,
            "limit_price": dstr(self.limit_price),
            "stop_price": dstr(self.stop_price),
            "status": self.status,
            "extended_hours": self.extended_hours,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
            "subtag": None,
            "source": None,
        }


@dataclass(slots=True)
class EmuPosition:
    symbol: str
    qty: int = 0
    cost: Decimal = Decimal(0)  # signed cost basis of the open quantity

    @property
    def avg_entry(self) -> Decimal:
        return (self.cost / self.qty) if self.qty else Decimal(0)


@dataclass(slots=True)
class Execution:
    execution_id: str
    activity_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: int
    price: Decimal
    ts: datetime
    cum_qty: int
    leaves_qty: int
    order_status: str

    def activity(self) -> dict[str, Any]:
        # Alpaca's activity id is "<yyyymmddhhmmssmmm>::<uuid>". Whether that uuid is the
        # stream's execution_id on the real Alpaca is unconfirmed, so the emulator gives
        # it one that shares nothing with it: clients must identify fills by (order,
        # cumulative quantity), never by assuming the two ids agree.
        stamp = self.ts.strftime("%Y%m%d%H%M%S") + f"{self.ts.microsecond // 1000:03d}"
        return {
            "id": f"{stamp}::{self.activity_id}",
            "activity_type": "FILL",
            "transaction_time": rfc3339(self.ts),
            "type": "fill" if self.leaves_qty == 0 else "partial_fill",
            "price": dstr(self.price),
            "qty": str(self.qty),
            "side": self.side,
            "symbol": self.symbol,
            "leaves_qty": str(self.leaves_qty),
            "order_id": self.order_id,
            "cum_qty": str(self.cum_qty),
            "order_status": self.order_status,
        }


EventSink = Callable[[str, dict[str, Any]], None]


@dataclass
class Exchange:
    """Orders, matching, positions and cash of one paper account."""

    on_event: EventSink
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    cash: Decimal = Decimal(100_000)
    initial_cash: Decimal = Decimal(100_000)
    is_open: bool = True
    fill_parts: int = 1
    shorting_enabled: bool = True
    orders: dict[str, EmuOrder] = field(default_factory=dict)
    by_cid: dict[str, EmuOrder] = field(default_factory=dict)
    positions: dict[str, EmuPosition] = field(default_factory=dict)
    prices: dict[str, Decimal] = field(default_factory=dict)
    liquidity: dict[str, int] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    reject_next: list[str] = field(default_factory=list)
    # Synchronous refusals of the next POSTs: (HTTP status, code, message); nothing is booked.
    refuse_next: list[tuple[int, int, str]] = field(default_factory=list)
    fills_paused: bool = False
    # Account state a session test drives (``set_account``; rolled at each close).
    status: str = "ACTIVE"
    trading_blocked: bool = False
    refused: int = 0  # POSTs refused through ``refuse_next``
    rejected_async: int = 0  # orders rejected through ``reject_next``
    last_equity: Decimal | None = None  # equity at the previous close (None: initial cash)

    # -- order entry -------------------------------------------------------------

    def create_order(self, body: dict[str, Any]) -> tuple[EmuOrder, str | None]:
        """Validate and book an order; returns it and an async-reject reason if armed."""
        if self.refuse_next:
            status, code, message = self.refuse_next.pop(0)
            self.refused += 1
            raise EmulatorError(status, code, message)
        order = self._build(body)
        self._check_funds(order)
        self.orders[order.id] = order
        self.by_cid[order.client_order_id] = order
        reject = self.reject_next.pop(0) if self.reject_next else None
        self.rejected_async += reject is not None
        return order, reject

    def _build(self, body: dict[str, Any]) -> EmuOrder:
        def need(key: str) -> Any:
            if body.get(key) in (None, ""):
                raise EmulatorError(422, VALIDATION, f"{key} is required")
            return body[key]

        symbol = str(need("symbol")).upper()
        side, otype, tif = need("side"), body.get("type") or need("order_type"), need(
            "time_in_force"
        )
        if side not in ("buy", "sell"):
            raise EmulatorError(422, VALIDATION, "invalid side")
        if otype not in ORDER_TYPES:
            raise EmulatorError(422, VALIDATION, f"invalid order type {otype}")
        if tif not in TIFS:
            raise EmulatorError(422, VALIDATION, f"invalid time_in_force {tif}")
        if body.get("notional") is not None:
            raise EmulatorError(422, VALIDATION, "notional orders are not emulated")
        qty_d = dec(need("qty"))
        if qty_d != qty_d.to_integral_value() or qty_d <= 0:
            raise EmulatorError(422, VALIDATION, "qty must be a positive whole number")
        limit = dec(body["limit_price"]) if body.get("limit_price") is not None else None
        stop = dec(body["stop_price"]) if body.get("stop_price") is not None else None
        if otype in ("limit", "stop_limit") and limit is None:
            raise EmulatorError(422, VALIDATION, "limit_price is required")
        if otype in ("stop", "stop_limit") and stop is None:
            raise EmulatorError(422, VALIDATION, "stop_price is required")
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if len(cid) > 128:
            raise EmulatorError(422, VALIDATION, "client_order_id is too long")
        if cid in self.by_cid:
            raise EmulatorError(422, 40010001, "client_order_id must be unique")
        now = self.now()
        return EmuOrder(
            id=str(uuid.uuid4()), client_order_id=cid, symbol=symbol, side=side,
            qty=int(qty_d), type=otype, time_in_force=tif, created_at=now, updated_at=now,
            limit_price=limit, stop_price=stop,
            extended_hours=bool(body.get("extended_hours", False)),
        )

    def _check_funds(self, order: EmuOrder) -> None:
        price = order.limit_price or order.stop_price or self.prices.get(order.symbol)
        if order.side == "buy" and price is not None:
            cost = price * order.qty
            if cost > self.buying_power():
                raise EmulatorError(
                    403, 40310000, "insufficient buying power",
                    buying_power=dstr(self.buying_power()), cost_basis=dstr(cost),
                )
        if order.side == "sell" and not self.shorting_enabled:
            held = self.positions.get(order.symbol, EmuPosition(order.symbol)).qty
            if order.qty > held:
                raise EmulatorError(
                    403, 40310000,
                    f"insufficient qty available for order (requested: {order.qty}, "
                    f"available: {max(held, 0)})",
                    available=str(max(held, 0)), symbol=order.symbol,
                )

    # -- lifecycle ---------------------------------------------------------------

    def _set(self, order: EmuOrder, status: str) -> None:
        order.status = status
        order.updated_at = self.now()

    def emit(self, event: str, order: EmuOrder, **extra: Any) -> None:
        self.on_event(event, {"event": event, "timestamp": rfc3339(self.now()),
                              "order": order.to_json(), **extra})

    def route(self, order: EmuOrder) -> None:
        """Accepted -> new (only while the market is open)."""
        if order.status != "accepted" or not self.is_open:
            return
        self._set(order, "new")
        self.emit("new", order)

    def reject(self, order: EmuOrder, reason: str) -> None:
        if not order.open:
            return
        self._set(order, "rejected")
        order.failed_at = order.updated_at
        self.emit("rejected", order, reason=reason)

    def cancel(self, order_id: str) -> EmuOrder:
        order = self.orders.get(order_id)
        if order is None:
            raise EmulatorError(404, 40410000, "order not found")
        if not order.open:
            raise EmulatorError(422, 42210000, f'order is already in "{order.status}" state')
        self._set(order, "pending_cancel")
        return order

    def finish_cancel(self, order: EmuOrder) -> None:
        if order.status != "pending_cancel":
            return
        self._set(order, "canceled")
        order.canceled_at = order.updated_at
        self.emit("canceled", order)

    def replace(self, order_id: str, body: dict[str, Any]) -> EmuOrder:
        old = self.orders.get(order_id)
        if old is None:
            raise EmulatorError(404, 40410000, "order not found")
        if old.status in ("accepted", "pending_new"):
            raise EmulatorError(
                422, 42210000, "unable to replace order, order isn't sent to exchange yet")
        if not old.open or old.status in ("pending_cancel", "pending_replace"):
            raise EmulatorError(422, 42210000, f'order is already in "{old.status}" state')
        qty = int(dec(body["qty"])) if body.get("qty") is not None else old.qty
        limit = dec(body["limit_price"]) if body.get("limit_price") is not None else None
        stop = dec(body["stop_price"]) if body.get("stop_price") is not None else None
        tif = body.get("time_in_force") or old.time_in_force
        new_limit, new_stop = limit or old.limit_price, stop or old.stop_price
        if (qty, new_limit, new_stop, tif) == (
            old.qty, old.limit_price, old.stop_price, old.time_in_force
        ):
            raise EmulatorError(422, 42210000, "order parameters are not changed")
        if qty <= old.filled_qty:
            raise EmulatorError(422, 42210000, "qty must be > filled_qty")
        cid = body.get("client_order_id") or str(uuid.uuid4())
        if cid in self.by_cid:
            raise EmulatorError(422, 40010001, "client_order_id must be unique")
        now = self.now()
        new = EmuOrder(
            id=str(uuid.uuid4()), client_order_id=cid, symbol=old.symbol, side=old.side,
            qty=qty - old.filled_qty, type=old.type, time_in_force=tif, created_at=now,
            updated_at=now, limit_price=new_limit, stop_price=new_stop, replaces=old.id,
            status="accepted",
        )
        self.orders[new.id] = new
        self.by_cid[cid] = new
        self._set(old, "replaced")
        old.replaced_at = old.updated_at
        old.replaced_by = new.id
        self.emit("replaced", old)
        return new

    def set_open(self, is_open: bool) -> None:
        """Opening routes accepted orders; closing expires open day orders."""
        self.is_open = is_open
        for order in list(self.orders.values()):
            if is_open and order.status == "accepted":
                self.route(order)
            elif not is_open and order.open and order.time_in_force == "day":
                self._set(order, "expired")
                order.expired_at = order.updated_at
                self.emit("expired", order)

    # -- matching ----------------------------------------------------------------

    def marketable_price(self, order: EmuOrder) -> Decimal | None:
        """The execution price if the order can trade now, else None."""
        price = self.prices.get(order.symbol)
        if price is None or not self.is_open or order.status in ("accepted", "pending_new"):
            return None
        buy = order.side == "buy"
        if order.type in ("stop", "stop_limit") and not order.triggered:
            hit = price >= order.stop_price if buy else price <= order.stop_price  # type: ignore[operator]
            if not hit:
                return None
            order.triggered = True
        if order.type in ("limit", "stop_limit"):
            assert order.limit_price is not None
            ok = price <= order.limit_price if buy else price >= order.limit_price
            return price if ok else None
        return price

    def plan_fills(self, order: EmuOrder) -> list[int]:
        """Quantities of the executions this order gets now (empty if none)."""
        if not order.open or order.status in ("pending_cancel", "accepted") or self.fills_paused:
            return []
        if self.marketable_price(order) is None:
            return []
        avail = min(order.leaves, self.liquidity.get(order.symbol, order.leaves))
        if order.time_in_force == "fok" and avail < order.leaves:
            return []
        parts = max(1, min(self.fill_parts, avail))
        base, extra = divmod(avail, parts)
        return [base + (1 if i < extra else 0) for i in range(parts) if base or i < extra]

    def execute(self, order: EmuOrder, qty: int, price: Decimal | None = None) -> Execution:
        """One execution: order, position, cash and activity change together."""
        px = price if price is not None else self.prices[order.symbol]
        qty = min(qty, order.leaves)
        order.filled_qty += qty
        order.filled_notional += px * qty
        done = order.leaves == 0
        self._set(order, "filled" if done else "partially_filled")
        if done:
            order.filled_at = order.updated_at
        signed = qty if order.side == "buy" else -qty
        self._book_position(order.symbol, signed, px)
        self.cash -= px * signed
        ex = Execution(
            execution_id=str(uuid.uuid4()), activity_id=str(uuid.uuid4()), order_id=order.id,
            client_order_id=order.client_order_id, symbol=order.symbol, side=order.side,
            qty=qty, price=px, ts=order.updated_at or self.now(), cum_qty=order.filled_qty,
            leaves_qty=order.leaves, order_status=order.status,
        )
        self.executions.append(ex)
        pos = self.positions.get(order.symbol)
        self.emit(
            "fill" if done else "partial_fill", order, execution_id=ex.execution_id,
            price=dstr(px), qty=str(qty), position_qty=str(pos.qty if pos else 0),
        )
        return ex

    def after_match(self, order: EmuOrder) -> None:
        """IOC/FOK remainders are canceled once the order had its chance to trade."""
        if order.open and order.time_in_force in ("ioc", "fok") and order.status != "accepted":
            self._set(order, "canceled")
            order.canceled_at = order.updated_at
            self.emit("canceled", order)

    def _book_position(self, symbol: str, signed: int, px: Decimal) -> None:
        pos = self.positions.setdefault(symbol, EmuPosition(symbol))
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            pos.cost += px * signed
            pos.qty += signed
        else:
            closing = min(abs(signed), abs(pos.qty))
            avg = pos.avg_entry
            sign = 1 if pos.qty > 0 else -1
            pos.cost -= avg * closing * sign
            pos.qty -= closing * sign
            rest = abs(signed) - closing
            if rest:
                pos.qty = rest * (1 if signed > 0 else -1)
                pos.cost = px * pos.qty
        if pos.qty == 0:
            del self.positions[symbol]

    # -- views -------------------------------------------------------------------

    def mark(self, symbol: str) -> Decimal:
        pos = self.positions.get(symbol)
        return self.prices.get(symbol) or (pos.avg_entry if pos else Decimal(0))

    def long_value(self) -> Decimal:
        return sum((self.mark(s) * p.qty for s, p in self.positions.items() if p.qty > 0),
                   Decimal(0))

    def short_value(self) -> Decimal:
        return sum((self.mark(s) * p.qty for s, p in self.positions.items() if p.qty < 0),
                   Decimal(0))

    def roll_day(self) -> None:
        """A new trading day: today's P&L is measured from the equity now."""
        self.last_equity = self.equity()

    def equity(self) -> Decimal:
        return self.cash + self.long_value() + self.short_value()

    def buying_power(self) -> Decimal:
        # Cash account semantics (multiplier 1): what is not in positions or reserved.
        reserved = Decimal(0)
        for o in self.orders.values():
            if o.open and o.side == "buy":
                px = o.limit_price or o.stop_price or self.prices.get(o.symbol) or Decimal(0)
                reserved += px * o.leaves
        return max(self.cash - reserved, Decimal(0))

    def account_json(self) -> dict[str, Any]:
        equity = self.equity()
        return {
            "id": "e6fe16f3-64a4-4921-8928-cadf02f92f98",
            "account_number": "PA3EMULATOR1",
            "status": self.status,
            "crypto_status": "ACTIVE",
            "currency": "USD",
            "buying_power": dstr(self.buying_power()),
            "regt_buying_power": dstr(self.buying_power()),
            "non_marginable_buying_power": dstr(self.buying_power()),
            "options_buying_power": dstr(self.buying_power()),
            "cash": dstr(self.cash),
            "accrued_fees": "0",
            "pending_transfer_in": "0",
            "portfolio_value": dstr(equity),
            "trading_blocked": self.trading_blocked,
            "transfers_blocked": False,
            "account_blocked": False,
            "created_at": "2024-01-02T15:04:05.123456Z",
            "trade_suspended_by_user": False,
            "multiplier": "1",
            "shorting_enabled": self.shorting_enabled,
            "equity": dstr(equity),
            "last_equity": dstr(self.last_equity if self.last_equity is not None
                                else self.initial_cash),
            "long_market_value": dstr(self.long_value()),
            "short_market_value": dstr(self.short_value()),
            "initial_margin": "0",
            "maintenance_margin": "0",
            "last_maintenance_margin": "0",
            "sma": "0",
            "options_approved_level": 0,
            "options_trading_level": 0,
        }

    def position_json(self, pos: EmuPosition) -> dict[str, Any]:
        px = self.mark(pos.symbol)
        mv = px * pos.qty
        return {
            "asset_id": asset_id(pos.symbol), "symbol": pos.symbol, "exchange": "NASDAQ",
            "asset_class": "us_equity", "asset_marginable": True, "qty": str(pos.qty),
            "qty_available": str(pos.qty), "avg_entry_price": dstr(pos.avg_entry),
            "side": "long" if pos.qty > 0 else "short", "market_value": dstr(mv),
            "cost_basis": dstr(pos.cost), "unrealized_pl": dstr(mv - pos.cost),
            "unrealized_plpc": "0", "unrealized_intraday_pl": dstr(mv - pos.cost),
            "unrealized_intraday_plpc": "0", "current_price": dstr(px),
            "lastday_price": dstr(px), "change_today": "0",
        }

    def clock_json(self) -> dict[str, Any]:
        now = self.now()
        later = now + timedelta(hours=6)
        return {
            "timestamp": rfc3339(now), "is_open": self.is_open,
            "next_open": rfc3339(now + timedelta(hours=18 if self.is_open else 12)),
            "next_close": rfc3339(later),
        }
