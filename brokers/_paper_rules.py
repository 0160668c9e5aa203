"""The paper broker's pure rules: fill prices against a bar, average cost, day expiry.

No state lives here; ``brokers.paper`` owns the account and calls these. The rules are
described in the ``brokers.paper`` module docstring.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

from brokers._paper_store import PaperOrder
from kernel.model import PRICE_TICK, Fill, OrderSide, OrderType, Position

NEW_YORK = ZoneInfo("America/New_York")
ZERO = Decimal(0)


def tick(px: Decimal) -> Decimal:
    """Quantize a price to 0.0001 (half-even)."""
    return px.quantize(PRICE_TICK, rounding=ROUND_HALF_EVEN)


def next_new_york_midnight(ts: datetime) -> datetime:
    """The first instant of the New York date after ``ts`` (a day order's expiry), UTC."""
    day = ts.astimezone(NEW_YORK).date() + timedelta(days=1)
    return datetime.combine(day, time(0), tzinfo=NEW_YORK).astimezone(UTC)


def execution_price(
    po: PaperOrder, o: Decimal, h: Decimal, lo: Decimal, slip: Decimal
) -> tuple[Decimal | None, bool]:
    """This bar's fill price for ``po`` (None: it does not execute), and whether a stop
    triggered on this bar (the caller records ``po.triggered``)."""
    buy = po.side is OrderSide.BUY
    kind = po.order_type
    if kind is OrderType.MARKET:
        return tick(o * (1 + slip) if buy else o * (1 - slip)), False
    if kind is OrderType.LIMIT or (kind is OrderType.STOP_LIMIT and po.triggered):
        return limit_fill(buy, o, h, lo, po.limit_price), False
    if po.triggered:  # a stop that triggered earlier is a market order now
        return tick(o), False
    stop = po.stop_price
    assert stop is not None
    if (h < stop) if buy else (lo > stop):
        return None, False
    trigger = max(o, stop) if buy else min(o, stop)
    if kind is OrderType.STOP:
        return tick(trigger), True
    # Stop-limit on its trigger bar: OHLC cannot say whether the bar came back to the
    # limit after the trigger, so it is assumed to have done so when low/high allow.
    limit = po.limit_price
    assert limit is not None
    if buy:
        return (tick(min(trigger, limit)) if lo <= limit else None), True
    return (tick(max(trigger, limit)) if h >= limit else None), True


def reserve_price(po: PaperOrder, slip: Decimal) -> Decimal:
    """The per-share price a buy reserves from buying power (sells reserve nothing)."""
    if po.side is OrderSide.SELL:
        return ZERO
    if po.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        assert po.limit_price is not None
        return po.limit_price
    if po.order_type is OrderType.STOP:
        assert po.stop_price is not None
        return max(po.reference_price, po.stop_price)
    return po.reference_price * (1 + slip)


def limit_fill(
    buy: bool, o: Decimal, h: Decimal, lo: Decimal, limit: Decimal | None
) -> Decimal | None:
    """A limit order's fill price on this bar: the better of open and limit, if crossed."""
    assert limit is not None
    if buy:
        return tick(min(o, limit)) if lo <= limit else None
    return tick(max(o, limit)) if h >= limit else None


def book_fill(pos: Position, fill: Fill) -> None:
    """Move a position by one fill at average cost; closing quantity realizes P&L.

    Deliberately the same arithmetic as ``portfolio.book.Portfolio.apply_fill``, so
    the broker's books and the daemon's agree exactly (not merely to the cent).
    """
    signed = fill.signed_qty
    if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
        new_qty = pos.qty + signed
        pos.avg_price = (pos.avg_price * abs(pos.qty) + fill.price * abs(signed)) / abs(new_qty)
        pos.qty = new_qty
        return
    closing = min(abs(signed), abs(pos.qty))
    direction = 1 if pos.qty > 0 else -1
    pos.realized_pnl += (fill.price - pos.avg_price) * closing * direction
    pos.qty += signed
    if pos.qty == 0:
        pos.avg_price = ZERO
    elif (pos.qty > 0) != (direction > 0):
        pos.avg_price = fill.price  # flipped: the rest opened at this fill's price
