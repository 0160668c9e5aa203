"""Value types of the trading domain: bars, signals, fills, positions, account snapshots.

Money is ``Decimal``; share quantities are ``int`` (whole shares, signed for positions).
Bars travel as one ``BarBatch`` per timestamp with numpy arrays across symbols, because
the hot path works on the whole cross-section at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

CENT = Decimal("0.01")
PRICE_TICK = Decimal("0.0001")


def to_price(value: float | str | Decimal) -> Decimal:
    """Exact decimal of a float price as written (``172.43`` -> ``Decimal('172.43')``)."""
    if isinstance(value, Decimal):
        return value
    return Decimal(repr(value) if isinstance(value, float) else value)


class OrderSide(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is OrderSide.BUY else -1


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(enum.StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


@dataclass(frozen=True, slots=True)
class Bar:
    """One symbol's OHLCV bar; ``ts`` is the start of the interval (UTC)."""

    symbol: str
    ts: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclass(frozen=True, slots=True)
class Signal:
    """A request for a target position: ``strength`` in [-1, 1] of the per-symbol maximum.

    ``price`` is the producer's reference price; ``ts`` when it was made; ``id`` unique
    per producer (duplicates are refused by the gate).
    """

    id: str
    symbol: str
    strength: float
    price: float
    ts: datetime
    source: str


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution. ``qty`` is positive; the side gives the direction."""

    execution_id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    qty: int
    price: Decimal
    ts: datetime
    commission: Decimal = Decimal(0)
    # The order's cumulative filled quantity after this execution, when the broker says
    # (Alpaca ``filled_qty`` / activity ``cum_qty``, IB ``cumQty``): with the order it
    # identifies the fill whatever execution id each channel gives it.
    cum_qty: int | None = None

    @property
    def signed_qty(self) -> int:
        return self.qty * self.side.sign


@dataclass(slots=True)
class Position:
    """A signed position with its average cost and realized P&L (mutable book entry)."""

    symbol: str
    qty: int = 0
    avg_price: Decimal = Decimal(0)
    realized_pnl: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class PositionView:
    """A position marked to its last price (read-only view for risk, status, reports)."""

    symbol: str
    qty: int
    avg_price: Decimal
    last_price: Decimal | None
    market_value: Decimal
    unrealized_pnl: Decimal
    realized_pnl: Decimal


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    """A position as the broker reports it (the source of truth for reconciliation)."""

    symbol: str
    qty: int
    avg_price: Decimal


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """The account as the broker reports it at one moment."""

    ts: datetime
    cash: Decimal
    equity: Decimal
    buying_power: Decimal
    positions: tuple[BrokerPosition, ...] = field(default=())
    # Equity at the end of the previous trading day, as the broker reports it (Alpaca
    # ``last_equity``): the base of today's P&L. None when the broker does not say.
    last_equity: Decimal | None = None
    status: str = "ACTIVE"  # the broker's account status (Alpaca ``status``)
    trading_blocked: bool = False


@dataclass(frozen=True, slots=True)
class MarketClock:
    """Whether the market is open now, from the broker or the exchange calendar."""

    ts: datetime
    is_open: bool
    next_open: datetime | None = None
    next_close: datetime | None = None
