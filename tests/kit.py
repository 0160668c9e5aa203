"""Shared test helpers: the fake broker's default moment and a market-order intent.

``FakeBroker`` itself lives in ``brokers.fake`` (a sibling of the paper broker); it is
re-exported here so a test imports the fake and its intents from one place.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from brokers.fake import EPOCH, FakeBroker
from kernel.events import OrderIntent
from kernel.model import OrderSide, OrderType, TimeInForce

# The moment a FakeBroker without a clock stamps everything with: Friday 2024-03-01,
# 10:00 New York (a regular session).
T0: datetime = EPOCH


def intent(cid: str, symbol: str = "AAPL", qty: int = 10, side: OrderSide = OrderSide.BUY,
           price: str = "100", ts: datetime = T0) -> OrderIntent:
    """A day market order at reference ``price``."""
    return OrderIntent(cid, symbol, side, qty, OrderType.MARKET, TimeInForce.DAY, ts,
                       Decimal(price))


__all__ = ["T0", "FakeBroker", "intent"]
