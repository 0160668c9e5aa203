"""Emergency controls: stop (cancel everything, halt) and liquidate (then close it all).

``emergency_stop`` halts first, so nothing new can pass the gate, then cancels every
open order. ``liquidate`` does the same and then closes every position with reduce-only
``origin="emergency"`` intents, which the gate lets through while HALTED (never through
a kill switch or while reconciling). In regular hours they are market orders; outside,
limit orders at a collar around the last price (``liquidation_collar_pct``: sells at
last x (1 - collar), buys at last x (1 + collar)). Rounds repeat until flat or
``liquidation_rounds`` is reached; each round waits up to ``liquidation_round_secs``
(wall time: an operational timeout, not market time) for its orders to finish, and
cancels what is left before the next.

Commands sent: ``CancelAllOrders``, ``PlaceOrder``. State: HALTED by ``emergency``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import structlog

from kernel.clock import Clock
from kernel.events import CancelAllOrders, Command, OrderIntent, PlaceOrder
from kernel.ids import client_order_id
from kernel.model import OrderSide, OrderType, TimeInForce
from kernel.views import Books
from risk.config import RiskConfig
from risk.gate import OrderBook
from risk.market import Market
from risk.state import TradingState, TradingStatus

log = structlog.get_logger("risk.emergency")

_TICK = Decimal("0.01")


@dataclass(slots=True)
class LiquidationResult:
    flat: bool
    rounds: int
    orders: int
    remaining: dict[str, int] = field(default_factory=dict)


async def emergency_stop(*, state: TradingStatus, send: Callable[[Command], None],
                         who: str = "operator", why: str = "emergency stop") -> None:
    """Halt, then cancel every open order."""
    log.error("emergency.stop", who=who, why=why)
    state.request(TradingState.HALTED, who="emergency", why=f"{why} ({who})")
    send(CancelAllOrders(reason=why))


async def liquidate(
    *,
    cfg: RiskConfig,
    state: TradingStatus,
    send: Callable[[Command], None],
    orders: OrderBook,
    portfolio: Books,
    market: Market,
    clock: Clock,
    who: str = "operator",
    why: str = "liquidate",
    poll_secs: float = 0.05,
) -> LiquidationResult:
    """Cancel everything, then close every position through the gate's emergency path."""
    await emergency_stop(state=state, send=send, who=who, why=why)
    await _until(lambda: not orders.open_orders(), cfg.liquidation_round_secs, poll_secs)
    result = LiquidationResult(flat=False, rounds=0, orders=0)
    for rnd in range(1, cfg.liquidation_rounds + 1):
        held = {v.symbol: (v.qty, v.last_price or v.avg_price) for v in portfolio.views()}
        if not held:
            break
        result.rounds = rnd
        regular = market.is_open(clock.now())
        for sym, (qty, last) in held.items():
            send(PlaceOrder(_exit(sym, qty, last, regular=regular, rnd=rnd, cfg=cfg,
                                  clock=clock)))
            result.orders += 1
        await _until(lambda: not orders.open_orders(), cfg.liquidation_round_secs, poll_secs)
        if orders.open_orders():
            send(CancelAllOrders(reason="liquidation round timed out"))
            await _until(lambda: not orders.open_orders(), cfg.liquidation_round_secs,
                         poll_secs)
        await asyncio.sleep(poll_secs)
    result.remaining = {v.symbol: v.qty for v in portfolio.views()}
    result.flat = not result.remaining
    if result.flat:
        log.warning("emergency.liquidated", rounds=result.rounds, orders=result.orders)
    else:
        log.error("emergency.liquidation_incomplete", rounds=result.rounds,
                  orders=result.orders, remaining=result.remaining)
    return result


def _exit(sym: str, qty: int, last: Decimal, *, regular: bool, rnd: int, cfg: RiskConfig,
          clock: Clock) -> OrderIntent:
    now = clock.now()
    side = OrderSide.SELL if qty > 0 else OrderSide.BUY
    limit: Decimal | None = None
    if not regular:
        collar = Decimal(repr(cfg.liquidation_collar_pct))
        factor = 1 - collar if side is OrderSide.SELL else 1 + collar
        limit = (last * factor).quantize(_TICK)
    return OrderIntent(
        client_order_id=client_order_id("em", sym, str(rnd), now.isoformat()),
        symbol=sym, side=side, qty=abs(qty),
        order_type=OrderType.MARKET if regular else OrderType.LIMIT,
        time_in_force=TimeInForce.DAY, ts=now, reference_price=last, limit_price=limit,
        reduce_only=True, origin="emergency",
    )


async def _until(done: Callable[[], bool], within: float, poll: float) -> bool:
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True
