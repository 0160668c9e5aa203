"""Signal -> target position -> order intent.

A signal asks for a target position: target notional = |strength| x max_position_pct x
equity when |strength| >= signal_threshold (else a target of zero), in whole shares,
long-only unless ``allow_shorts``. The order trades the difference between the target
and what is held plus what open orders are already working. Orders below
``min_order_notional`` are skipped; above ``max_order_notional`` they are capped. Every
skip and cap is a log event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

import structlog

from kernel.events import OrderIntent, PlaceOrder, SignalBatch
from kernel.ids import client_order_id
from kernel.model import OrderSide, OrderType, Signal, TimeInForce, to_price
from risk.config import RiskConfig

log = structlog.get_logger("risk.sizing")


def target_qty(signal: Signal, equity: float | Decimal, cfg: RiskConfig) -> int:
    """Whole-share target position for a signal (signed)."""
    strength = signal.strength
    if abs(strength) < cfg.signal_threshold or signal.price <= 0:
        return 0
    if strength < 0 and not cfg.allow_shorts:
        return 0
    notional = abs(strength) * cfg.max_position_pct * float(equity)
    shares = math.floor(notional / signal.price + 1e-9)
    return shares if strength > 0 else -shares


class Sizer:
    """Turns each ``SignalBatch`` into ``PlaceOrder`` commands (one per symbol to trade).

    ``holding(symbol)`` must return the signed position plus the signed quantity still
    working in open orders, so a signal repeated while an order works adds nothing.
    """

    def __init__(
        self,
        cfg: RiskConfig,
        *,
        equity: Callable[[], Decimal],
        holding: Callable[[str], int],
        send: Callable[[PlaceOrder], None],
        prefix: str = "td",
    ) -> None:
        self._cfg = cfg
        self._equity = equity
        self._holding = holding
        self._send = send
        self._prefix = prefix
        self.skipped = 0

    def on_signals(self, batch: SignalBatch) -> None:
        # Targets need equity only to the share, so one float per batch does; the money
        # that reaches an order is Decimal.
        equity = float(self._equity())
        batch_id = f"{batch.source}:{batch.ts.isoformat()}"
        # One line per batch (a model scores every symbol each bar); the journal keeps
        # each signal.
        log.info("signal.received", source=batch.source, ts=batch.ts.isoformat(),
                 signals=len(batch.signals), equity=str(equity))
        for sig in batch.signals:
            intent = self.size(sig, equity, batch_id)
            if intent is not None:
                self._send(PlaceOrder(intent))

    def size(self, sig: Signal, equity: float | Decimal,
             batch_id: str | None = None) -> OrderIntent | None:
        cfg = self._cfg
        if not (math.isfinite(sig.strength) and math.isfinite(sig.price)) or sig.price <= 0:
            # Not sizeable; the gate names it INVALID_SIGNAL when it sees such a signal.
            return self._intent(sig, OrderSide.BUY, 0, batch_id, Decimal(0))
        delta = target_qty(sig, equity, cfg) - self._holding(sig.symbol)
        if delta == 0:
            return None
        qty = abs(delta)
        price = to_price(sig.price)
        if price * qty < cfg.min_order_notional:
            self.skipped += 1
            log.info("sizing.skip", symbol=sig.symbol, signal_id=sig.id, qty=qty,
                     notional=str(price * qty), reason="MIN_ORDER_NOTIONAL",
                     limit=str(cfg.min_order_notional))
            return None
        if price * qty > cfg.max_order_notional:
            capped = int(cfg.max_order_notional // price)
            log.info("sizing.capped", symbol=sig.symbol, signal_id=sig.id, qty=qty,
                     capped_qty=capped, limit=str(cfg.max_order_notional))
            qty = capped
            if qty == 0:
                return None
        side = OrderSide.BUY if delta > 0 else OrderSide.SELL
        return self._intent(sig, side, qty, batch_id, price)

    def _intent(self, sig: Signal, side: OrderSide, qty: int, batch_id: str | None,
                price: Decimal) -> OrderIntent:
        return OrderIntent(
            client_order_id=client_order_id(self._prefix, sig.source, sig.id, sig.symbol),
            symbol=sig.symbol, side=side, qty=qty, order_type=OrderType.MARKET,
            time_in_force=TimeInForce.DAY, ts=sig.ts, reference_price=price,
            signal=sig, batch_id=batch_id,
        )
