"""Target weights -> the orders that get there, as ``PlaceOrder`` commands for the gate.

A weight is the signed fraction of equity wanted in a symbol (0.04 = 4% long). Targets
are whole shares, rounded toward zero; the order trades the difference from what is
held plus what open orders are already working. Symbols held but absent from the
targets are closed when ``close_others``. Sells come first, so a gate that checks buying
power sees the cash they free. Nothing here bypasses a limit: every intent goes through
the same gate as a signal's (``origin="rebalance"``, no signal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from kernel.events import OrderIntent, PlaceOrder
from kernel.ids import client_order_id
from kernel.model import OrderSide, OrderType, TimeInForce


def target_shares(weight: float, equity: Decimal, price: Decimal) -> int:
    """Whole shares for ``weight`` of ``equity`` at ``price`` (toward zero)."""
    if not math.isfinite(weight) or price <= 0:
        return 0
    shares = int(abs(Decimal(repr(weight)) * equity) // price)
    return shares if weight >= 0 else -shares


def rebalance(
    targets: Mapping[str, float],
    *,
    equity: Decimal,
    prices: Mapping[str, Decimal],
    holdings: Mapping[str, int],
    ts: datetime,
    batch_id: str,
    close_others: bool = True,
    prefix: str = "rb",
) -> list[PlaceOrder]:
    """The orders that move ``holdings`` (held + working, signed) to ``targets``.

    Symbols without a price are skipped (nothing can be sized without one).
    """
    wanted = dict(targets)
    if close_others:
        for sym, held in holdings.items():
            if held and sym not in wanted:
                wanted[sym] = 0.0
    out: list[tuple[int, PlaceOrder]] = []
    for sym, weight in sorted(wanted.items()):
        price = prices.get(sym)
        if price is None or price <= 0:
            continue
        delta = target_shares(weight, equity, price) - holdings.get(sym, 0)
        if delta == 0:
            continue
        side = OrderSide.BUY if delta > 0 else OrderSide.SELL
        intent = OrderIntent(
            client_order_id=client_order_id(prefix, batch_id, sym), symbol=sym, side=side,
            qty=abs(delta), order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
            ts=ts, reference_price=price, batch_id=batch_id, origin="rebalance",
        )
        out.append((side.sign, PlaceOrder(intent)))
    out.sort(key=lambda t: t[0])  # sells (-1) before buys (+1)
    return [cmd for _, cmd in out]
