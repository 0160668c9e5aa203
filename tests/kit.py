"""Shared test helpers: the fake broker's default moment and a market-order intent.

``FakeBroker`` itself lives in ``brokers.fake`` (a sibling of the paper broker); it is
re-exported here so a test imports the fake and its intents from one place.
"""

from __future__ import annotations

import os
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


def process_env(**extra: str) -> dict[str, str]:
    """The environment for a ``tradingd`` process a test starts: this one without any
    ``TRADINGD_``/``APCA_`` setting of the developer's, the HTTP server on a free port
    (a daemon the developer runs beside the tests keeps 127.0.0.1:8787), then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADINGD_", "APCA_"))}
    env["TRADINGD_HTTP__LISTEN"] = "127.0.0.1:0"
    env.update(extra)
    return env
