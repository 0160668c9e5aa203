"""Pure mappings from Alpaca's JSON (plain dicts, ``raw_data=True``) to domain values.

No ``alpaca`` import here: these functions take what the wire carries, so they are
testable without the SDK and survive new enum values Alpaca may add.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from kernel.broker import BrokerFill, BrokerOrder
from kernel.model import (
    AccountSnapshot,
    BrokerPosition,
    MarketClock,
    OrderSide,
    OrderType,
    TimeInForce,
)
from kernel.orders import OrderStatus

NEW_YORK = ZoneInfo("America/New_York")

# Alpaca statuses we fold into the nearest domain status (the rest map by name).
_STATUS_ALIASES = {
    "accepted_for_bidding": OrderStatus.ACCEPTED,
    "pending_review": OrderStatus.PENDING_NEW,
    "held": OrderStatus.ACCEPTED,
    "calculated": OrderStatus.PARTIALLY_FILLED,
    "stopped": OrderStatus.NEW,
    "suspended": OrderStatus.NEW,
}


@dataclass(frozen=True, slots=True)
class TradingSession:
    """One trading day of the exchange calendar; ``open``/``close`` are UTC."""

    date: date
    open: datetime
    close: datetime


def parse_ts(text: str | datetime | None) -> datetime | None:
    """RFC 3339 (``Z`` or offset, up to nanoseconds) to an aware UTC datetime."""
    if text is None or isinstance(text, datetime):
        return text.astimezone(UTC) if isinstance(text, datetime) else None
    s = text.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    head, dot, rest = s.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        tz = rest[len(digits):]
        s = f"{head}.{digits[:6]}{tz}"
    ts = datetime.fromisoformat(s)
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)


def to_decimal(value: Any) -> Decimal | None:
    """Alpaca decimals arrive as strings (REST) or floats (SDK-parsed events)."""
    if value is None or value == "":
        return None
    try:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))
    except InvalidOperation:
        return None


def to_shares(value: Any) -> int:
    """Whole shares; a fractional quantity (not traded by us) rounds toward zero."""
    d = to_decimal(value)
    return int(d) if d is not None else 0


def order_status(text: str) -> OrderStatus | None:
    try:
        return OrderStatus(text)
    except ValueError:
        return _STATUS_ALIASES.get(text)


def broker_order(o: dict[str, Any]) -> BrokerOrder:
    """An Alpaca order object as a ``BrokerOrder`` snapshot."""
    status = order_status(str(o.get("status", ""))) or OrderStatus.NEW
    submitted = parse_ts(o.get("submitted_at") or o.get("created_at"))
    return BrokerOrder(
        client_order_id=str(o["client_order_id"]),
        broker_order_id=str(o["id"]),
        symbol=str(o["symbol"]),
        side=OrderSide(o["side"]),
        qty=to_shares(o.get("qty")),
        order_type=OrderType(o.get("type") or o["order_type"]),
        time_in_force=TimeInForce(o["time_in_force"]),
        status=status,
        filled_qty=to_shares(o.get("filled_qty")),
        filled_avg_price=to_decimal(o.get("filled_avg_price")),
        submitted_at=submitted or datetime.fromtimestamp(0, UTC),
        limit_price=to_decimal(o.get("limit_price")),
        stop_price=to_decimal(o.get("stop_price")),
    )


def broker_fill(a: dict[str, Any], client_order_id: str) -> BrokerFill:
    """A FILL activity as a ``BrokerFill``. Its identity is (``order_id``, ``cum_qty``):
    whether the activity id (``<yyyymmddhhmmssmmm>::<uuid>``) has anything to do with
    the stream's ``execution_id`` is unconfirmed for the real Alpaca, so the activity id
    is kept only as this channel's own id."""
    ts = parse_ts(a.get("transaction_time"))
    cum = to_decimal(a.get("cum_qty"))
    return BrokerFill(
        execution_id=str(a["id"]),
        client_order_id=client_order_id,
        symbol=str(a["symbol"]),
        side=OrderSide(a["side"]),
        qty=to_shares(a["qty"]),
        price=to_decimal(a["price"]) or Decimal(0),
        ts=ts or datetime.fromtimestamp(0, UTC),
        cum_qty=int(cum) if cum is not None else None,
        broker_order_id=str(a.get("order_id") or ""),
    )


def account_snapshot(a: dict[str, Any], positions: list[BrokerPosition],
                     ts: datetime) -> AccountSnapshot:
    """``GET /v2/account`` as an ``AccountSnapshot``; ``last_equity`` is the equity at
    the previous close (None if Alpaca leaves it out)."""
    return AccountSnapshot(
        ts=ts, cash=to_decimal(a["cash"]) or Decimal(0),
        equity=to_decimal(a["equity"]) or Decimal(0),
        buying_power=to_decimal(a["buying_power"]) or Decimal(0),
        positions=tuple(positions), last_equity=to_decimal(a.get("last_equity")),
        status=str(a.get("status") or "ACTIVE"),
        trading_blocked=bool(a.get("trading_blocked") or a.get("account_blocked")),
    )


def broker_position(p: dict[str, Any]) -> BrokerPosition:
    return BrokerPosition(
        symbol=str(p["symbol"]),
        qty=to_shares(p["qty"]),
        avg_price=to_decimal(p.get("avg_entry_price")) or Decimal(0),
    )


def market_clock(c: dict[str, Any]) -> MarketClock:
    ts = parse_ts(c.get("timestamp"))
    assert ts is not None
    return MarketClock(
        ts=ts,
        is_open=bool(c.get("is_open")),
        next_open=parse_ts(c.get("next_open")),
        next_close=parse_ts(c.get("next_close")),
    )


def trading_session(d: dict[str, Any]) -> TradingSession:
    """Calendar rows carry New York wall times as ``HH:MM``."""
    day = date.fromisoformat(str(d["date"])[:10])

    def at(hhmm: str) -> datetime:
        t = time.fromisoformat(hhmm if len(hhmm) > 5 else hhmm + ":00")
        return datetime.combine(day, t, NEW_YORK).astimezone(UTC)

    return TradingSession(date=day, open=at(str(d["open"])), close=at(str(d["close"])))


def order_body_fields(
    *,
    order_type: OrderType,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
) -> None:
    """Raise ``ValueError`` when the prices do not fit the order type."""
    if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and limit_price is None:
        raise ValueError(f"{order_type} order needs a limit_price")
    if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and stop_price is None:
        raise ValueError(f"{order_type} order needs a stop_price")
